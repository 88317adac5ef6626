"""Replay Chi et al.'s 206 recorded PushT episodes (initial state + recorded actions) and report how far the
simulated states drift from the recorded ones: per-episode maximum block position / angle and agent errors,
summarised by median and 95th percentile over episodes.

    python benchmarks/pusht_replay_fidelity.py                    # this venv's pymunk
    PYTHONPATH=. /tmp/venv-pm6/bin/python benchmarks/pusht_replay_fidelity.py   # pymunk 6
    python benchmarks/pusht_replay_fidelity.py --position-first   # gym-pusht's legacy reset order, for contrast
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pymunk

from envs import pusht
from envs.replay_buffer import ReplayBuffer
from scidiff.data import data_path


class _PositionFirstPushT(pusht.PushTEnv):
    """PushT with the block's position set before its angle (gym-pusht's order), to show why the order matters."""

    def _set_state(self, state: np.ndarray) -> None:
        self.agent.position = (float(state[0]), float(state[1]))
        self.block.position = (float(state[2]), float(state[3]))
        self.block.angle = float(state[4])
        self.space.step(pusht.DT)


def episode_errors(env: pusht.PushTEnv, states: np.ndarray, actions: np.ndarray) -> tuple[float, float, float]:
    """Max block position error (px), block angle error (rad) and agent error (px) of one replayed episode."""
    simulated = [env.reset(options={"reset_to_state": states[0]})[0]]
    simulated += [env.step(action)[0] for action in actions[:-1]]
    simulated, recorded = np.stack(simulated), states.astype(np.float64)
    block = np.linalg.norm(simulated[:, 2:4] - recorded[:, 2:4], axis=1).max()
    angle = np.abs((simulated[:, 4] - recorded[:, 4] + np.pi) % (2 * np.pi) - np.pi).max()
    agent = np.linalg.norm(simulated[:, :2] - recorded[:, :2], axis=1).max()
    return float(block), float(angle), float(agent)


def main() -> None:
    """Replay the episodes and print the summary table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=None, help="replay only the first N episodes")
    parser.add_argument(
        "--position-first", action="store_true", help="set block position before angle (gym-pusht's order)"
    )
    args = parser.parse_args()

    buffer = ReplayBuffer.load(data_path("pusht/pusht_cchi_v7_replay.zarr"), keys=["state", "action"])
    n = buffer.n_episodes if args.episodes is None else min(args.episodes, buffer.n_episodes)
    env = _PositionFirstPushT() if args.position_first else pusht.PushTEnv()
    start = time.perf_counter()
    errors = np.array([episode_errors(env, buffer.episode(i)["state"], buffer.episode(i)["action"]) for i in range(n)])
    elapsed = time.perf_counter() - start

    order = "position before angle (gym-pusht)" if args.position_first else "angle before position (scidiff)"
    print(
        f"PushT replay fidelity: {n} episodes, {int(buffer.episode_lengths[:n].sum())} steps, "
        f"pymunk {pymunk.version}, reset order: {order}"
    )
    print(f"{'per-episode max error':<28}{'median':>12}{'p95':>12}{'max':>12}")
    for name, column in zip(("block position (px)", "block angle (rad)", "agent position (px)"), errors.T, strict=True):
        print(f"{name:<28}{np.median(column):>12.3g}{np.percentile(column, 95):>12.3g}{column.max():>12.3g}")
    print(f"episodes with block error < 0.01 px: {(errors[:, 0] < 0.01).sum()} / {n}; replay time {elapsed:.1f} s")


if __name__ == "__main__":
    main()
