"""The particle task's scripted expert: success rate, balance of the two goal orders and episode length, next to a
policy that averages the expert's two modes (it heads between the goals), which should fail.

    python benchmarks/envs_particle_expert.py [--episodes 1000]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from envs.episode import play_episode
from envs.experts import ParticleExpert, particle_mode_average


def evaluate(policy, episodes: int, reset_policy=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Success flags, first-visited goal (-1 none) and episode lengths over seeds 0..episodes-1 of Particle-v0."""
    env = gym.make("scidiff/Particle-v0")
    success, first, length = [], [], []
    for seed in range(episodes):
        if reset_policy is not None:
            reset_policy(seed)
        episode = play_episode(env, policy, seed=seed)
        success.append(episode.info["is_success"])
        first.append(episode.info["first_goal"])
        length.append(len(episode.actions))
    return np.array(success), np.array(first), np.array(length)


def main() -> None:
    """Evaluate the expert and the mode-averaging policy and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args()
    expert = ParticleExpert()
    rows = {
        "scripted expert": evaluate(expert, args.episodes, reset_policy=lambda seed: expert.reset(seed=seed)),
        "average of the two modes": evaluate(particle_mode_average, args.episodes),
    }
    print(f"scidiff/Particle-v0, {args.episodes} episodes (seeds 0..{args.episodes - 1}), 50-step limit")
    print(
        f"{'policy':<28}{'success':>10}{'goal A first':>14}{'goal B first':>14}{'steps (median / max, successes)':>34}"
    )
    for name, (success, first, length) in rows.items():
        steps = f"{np.median(length[success]):.0f} / {length[success].max()}" if success.any() else "-"
        print(f"{name:<28}{success.mean():>10.3f}{np.mean(first == 0):>14.3f}{np.mean(first == 1):>14.3f}{steps:>34}")


if __name__ == "__main__":
    main()
