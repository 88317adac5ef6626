"""LeRobot's PushT evaluation: 500 episodes in gym-pusht from consecutive seeds, scored as ``lerobot-eval`` names it
(``avg_max_reward``: per-episode max of clip(coverage / 0.95, 0, 1), averaged; ``pc_success``: % of episodes that
reach coverage > 0.95), next to scidiff's own PushT started from exactly the same initial states.

gym-pusht's seeded resets draw its own initial states (uniform block angle; Chi et al.'s legacy draw is Gaussian),
so its seeds 1000.. are not scidiff's seeds 1000..: scidiff's env is reset to the pose gym-pusht realised for each
seed. gym-pusht needs pymunk < 7, so run it in a second venv:

    python3 -m venv /tmp/venv-pm6 && /tmp/venv-pm6/bin/pip install torch==2.13.0 "pymunk<7" gym-pusht -e .
    OMP_NUM_THREADS=1 /tmp/venv-pm6/bin/python benchmarks/policy_lerobot_protocol.py                # bundled policy
    OMP_NUM_THREADS=1 /tmp/venv-pm6/bin/python benchmarks/policy_lerobot_protocol.py --checkpoint S --sampler consistency --steps 1
    OMP_NUM_THREADS=1 /tmp/venv-pm6/bin/python benchmarks/policy_lerobot_protocol.py \
        --checkpoint scidiff/policy/weights/pusht_image.safetensors          # camera policy: pixels_agent_pos in both

A camera policy sees gym-pusht's pixels_agent_pos observations and scidiff's PushT-pixels-v0.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from scidiff.core import SamplerSpec
from scidiff.policy import load_policy
from scidiff.policy.cli import BUNDLED_WEIGHTS, PIXELS_ENV
from scidiff.policy.rollout import make_env, rollout, summarize

GYM_PUSHT = "gym_pusht/PushT-v0"
SCIDIFF_PUSHT = "scidiff/PushT-keypoints-v0"


def gym_pusht_initial_states(seeds: list[int]) -> dict[int, np.ndarray]:
    """The [agent_x, agent_y, block_x, block_y, block_angle] pose gym-pusht's reset(seed) actually realises."""
    env = make_env(GYM_PUSHT)  # 5-d state observations: the pose itself
    try:
        return {s: np.asarray(env.reset(seed=s)[0], dtype=np.float64) for s in seeds}
    finally:
        env.close()


def lerobot_summary(summary: dict) -> dict:
    """The aggregate figures under LeRobot's names (summarize already uses them)."""
    return {k: summary[k] for k in ("avg_max_reward", "pc_success", "episodes", "mean_chunk_latency_ms")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(BUNDLED_WEIGHTS), help="policy file (default: the bundled one)")
    parser.add_argument("--episodes", type=int, default=500, help="episodes (default 500, LeRobot's n_episodes)")
    parser.add_argument("--seed", type=int, default=1000, help="first seed (default 1000, lerobot-eval's)")
    parser.add_argument("--sampler", default=None, help="default: the policy's own (DDIM-10; consistency for students)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warm-start", type=float, default=None, metavar="T",
                        help="start each chunk after an episode's first from the previous plan noised to time T")
    parser.add_argument("--num-envs", type=int, default=50, help="vectorised envs (default 50)")
    parser.add_argument("--json", default=None, help="write both summaries here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    policy = load_policy(args.checkpoint)
    spec = policy.sampler_spec(args.sampler, args.steps, {})
    seeds = list(range(args.seed, args.seed + args.episodes))
    states = gym_pusht_initial_states(seeds)
    rows = {}
    scidiff_env = PIXELS_ENV if policy.cameras else SCIDIFF_PUSHT
    for env_id, options in ((GYM_PUSHT, None), (scidiff_env, lambda s: {"reset_to_state": states[s]})):
        start = time.perf_counter()
        results, latencies, _ = rollout(policy, env_id, episodes=args.episodes, seed=args.seed, sampler=spec,
                                        num_envs=args.num_envs, reset_options=options, progress=False,
                                        warm_start=args.warm_start)
        rows[env_id] = {**lerobot_summary(summarize(results, latencies)), "wall_s": time.perf_counter() - start}
        print(json.dumps({"env": env_id, **rows[env_id]}), flush=True)
    warm = f", warm start t = {args.warm_start:g}" if args.warm_start is not None else ""
    print(f"\n{args.checkpoint}, sampler {spec.name} {spec.steps} {spec.options}{warm}, seeds {seeds[0]}-{seeds[-1]} "
          "(gym-pusht's draws; scidiff reset to the same poses)")
    print("| simulator | avg_max_reward | pc_success |\n|---|---|---|")
    for env_id, r in rows.items():
        print(f"| {env_id} | {r['avg_max_reward']:.3f} | {r['pc_success']:.1f} % |")
    print("LeRobot diffusion_pusht (image policy), 500 episodes: 0.959 / 63.8 %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "sampler": [spec.name, spec.steps, spec.options],
                       "warm_start": args.warm_start, **rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
