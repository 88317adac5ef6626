"""Compare scidiff's PushT with gym-pusht's (huggingface/gym-pusht) from identical initial states under identical
action sequences: the recorded human actions of Chi et al.'s 206 episodes. Reports per-episode maximum differences
of the state, coverage and reward, agreement of the termination flags, and the pixel difference of the 96 x 96
renderings of identical states.

gym-pusht needs pymunk < 7 and pygame, so run it in a pymunk-6 venv:

    /tmp/venv-pm6/bin/pip install gym-pusht
    PYTHONPATH=. /tmp/venv-pm6/bin/python benchmarks/pusht_compare_gym_pusht.py

Two reset protocols are compared, because gym-pusht's reset_to_state sets the block's position before its angle
(the block then rotates about its centre of gravity and lands elsewhere):
- "as shipped": gym-pusht gets the recorded state; scidiff gets the pose gym-pusht actually realises.
- "angle first": gym-pusht with its _set_state in Chi et al.'s (and scidiff's) order; both get the recorded state.
Seeded resets are not compared: gym-pusht 0.1.8 draws them from the env generator (uniform angle), scidiff
from Chi et al.'s legacy RandomState.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version

import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
import gymnasium as gym
import numpy as np
import pymunk

from envs import pusht
from envs.replay_buffer import ReplayBuffer
from scidiff.data import data_path


def _angle_first(env) -> None:
    """Make a gym-pusht env set the block angle before its position (Chi et al.'s non-legacy order)."""

    def set_state(state):
        env.agent.position = list(state[:2])
        env.block.angle = state[4]
        env.block.position = list(state[2:4])
        env.space.step(env.dt)

    env._set_state = set_state


def realised_by_position_first(state: np.ndarray) -> np.ndarray:
    """The state gym-pusht reaches from reset_to_state: it sets the position at angle 0, then rotates about the CoG."""
    cog = pusht.TEE_BOXES_LOCAL.mean(axis=1).mean(axis=0)  # Chi et al.'s centre of gravity: mean of the box centroids
    c, s = np.cos(state[4]), np.sin(state[4])
    origin = state[2:4] + cog - np.array([c * cog[0] - s * cog[1], s * cog[0] + c * cog[1]])
    return np.array([state[0], state[1], origin[0], origin[1], state[4]])


def compare_episode(
    reference, ours: pusht.PushTEnv, start_ref, start_ours, actions, render_every: int
) -> dict[str, float]:
    """Run both envs on `actions`; max state/coverage/reward differences, flag mismatches, rendering difference."""
    ref_obs, ref_info = reference.reset(options={"reset_to_state": start_ref})
    our_obs, _ = ours.reset(options={"reset_to_state": start_ours})
    diffs, cover, reward, flags, pixels = [our_obs - ref_obs], [], [], 0, []
    for t, action in enumerate(actions):
        ref_obs, ref_reward, ref_done, _, ref_info = reference.step(np.asarray(action, dtype=np.float64))
        our_obs, our_reward, our_done, _, our_info = ours.step(action)
        diffs.append(our_obs - ref_obs)
        cover.append(abs(our_info["coverage"] - ref_info["coverage"]))
        reward.append(abs(our_reward - ref_reward))
        flags += our_done != ref_done
        if t % render_every == 0:
            # Same state for both renderers, so only the drawing differs.
            ref_image = reference._render().astype(np.float64)
            pixels.append(np.abs(pusht.render_pusht(ref_obs).astype(np.float64) - ref_image).mean())
    diffs = np.stack(diffs)
    diffs[:, 4] = (diffs[:, 4] + np.pi) % (2 * np.pi) - np.pi
    return {
        "block position (px)": np.linalg.norm(diffs[:, 2:4], axis=1).max(),
        "block angle (rad)": np.abs(diffs[:, 4]).max(),
        "agent position (px)": np.linalg.norm(diffs[:, :2], axis=1).max(),
        "coverage": max(cover),
        "reward": max(reward),
        "termination flag mismatches": flags,
        "96x96 pixel MAE (0-255)": float(np.mean(pixels)),
    }


def main() -> None:
    """Run both protocols over the recorded episodes and print the summary tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=None, help="compare only the first N episodes")
    parser.add_argument("--render-every", type=int, default=10, help="compare renderings every N steps")
    args = parser.parse_args()

    buffer = ReplayBuffer.load(data_path("pusht/pusht_cchi_v7_replay.zarr"), keys=["state", "action"])
    n = buffer.n_episodes if args.episodes is None else min(args.episodes, buffer.n_episodes)
    print(
        f"scidiff PushT vs gym-pusht {version('gym-pusht')} (pymunk {pymunk.version}): "
        f"{n} recorded episodes, recorded actions"
    )
    for protocol in ("as shipped", "angle first"):
        reference = gym.make("gym_pusht/PushT-v0", obs_type="state").unwrapped
        if protocol == "angle first":
            _angle_first(reference)
        ours = pusht.PushTEnv()
        rows = []
        for i in range(n):
            episode = buffer.episode(i)
            start = episode["state"][0].astype(np.float64)
            start_ours = realised_by_position_first(start) if protocol == "as shipped" else start
            rows.append(compare_episode(reference, ours, start, start_ours, episode["action"][:-1], args.render_every))
        print(f"\nprotocol: {protocol}")
        print(f"{'per-episode max difference':<32}{'median':>12}{'p95':>12}{'max':>12}")
        for key in rows[0]:
            column = np.array([row[key] for row in rows], dtype=np.float64)
            print(f"{key:<32}{np.median(column):>12.3g}{np.percentile(column, 95):>12.3g}{column.max():>12.3g}")

    seeded_ours = pusht.PushTEnv().reset(seed=100000)[0]
    seeded_ref = gym.make("gym_pusht/PushT-v0").unwrapped.reset(seed=100000)[0]
    print(
        f"\nreset(seed=100000): scidiff {np.round(seeded_ours, 3).tolist()} "
        f"vs gym-pusht {np.round(seeded_ref, 3).tolist()}"
    )


if __name__ == "__main__":
    main()
