"""Environment steps per second on the CPU: one env from gymnasium.make (with its default wrappers) and a
synchronous vector of 8, for every registered scidiff id, under uniformly random actions.

    python benchmarks/envs_throughput.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import gymnasium as gym
import pymunk

import envs


def single_env_rate(env_id: str, seconds: float) -> float:
    """Steps per second of one env, resetting at episode ends."""
    env = gym.make(env_id)
    env.action_space.seed(0)
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def vector_env_rate(env_id: str, seconds: float, num_envs: int = 8) -> float:
    """Env steps per second (summed over sub-envs) of a synchronous vector env with autoreset."""
    vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    vec.action_space.seed(0)
    vec.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vec.step(vec.action_space.sample())
        steps += num_envs
    rate = steps / (time.perf_counter() - start)
    vec.close()
    return rate


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    print(f"CPU env throughput ({platform.processor() or platform.machine()}, pymunk {pymunk.version}, random actions)")
    print(f"{'env id':<30}{'1 env (steps/s)':>18}{'sync vector x8 (steps/s)':>28}")
    for env_id in envs.ENV_IDS:
        print(
            f"{env_id:<30}{single_env_rate(env_id, args.seconds):>18,.0f}"
            f"{vector_env_rate(env_id, args.seconds):>28,.0f}"
        )


if __name__ == "__main__":
    main()
