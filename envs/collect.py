"""Record scripted-expert demonstrations into a ReplayBuffer, deterministically per seed."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from .episode import play_episode
from .experts import Expert, make_expert
from .replay_buffer import ReplayBuffer

__all__ = ["episode_seeds", "run_episode", "collect_episodes"]


def episode_seeds(seed: int, n: int) -> np.ndarray:
    """`n` independent per-episode seeds derived from `seed` (a prefix of one SeedSequence stream)."""
    return np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)


def _as_step_arrays(obs: Any) -> dict[str, np.ndarray]:
    """Dataset keys of one observation: a vector is stored as 'state', a dict by its own keys."""
    if isinstance(obs, dict):
        return {key: np.asarray(value) for key, value in obs.items()}
    return {"state": np.asarray(obs)}


def run_episode(env: gym.Env, expert: Expert, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from reset(seed): per-step observations (before acting) and actions, and its success."""
    expert.reset(seed=seed)
    played = play_episode(env, expert, seed=seed)
    # zip leaves out the final observation: no action was taken from it.
    steps = [{**_as_step_arrays(obs), "action": np.asarray(action)}
             for obs, action in zip(played.observations, played.actions)]
    episode = {key: np.stack([step[key] for step in steps]) for key in steps[0]}
    return episode, bool(played.info.get("is_success", played.terminated))


def collect_episodes(
    env_id: str, n_episodes: int, seed: int = 0, keep_failures: bool = False, progress: bool = True
) -> tuple[ReplayBuffer, int]:
    """Record `n_episodes` expert episodes of `env_id` (successes unless keep_failures); returns (buffer, failures)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    env = gym.make(env_id)
    expert = make_expert(env_id)
    buffer, failures = ReplayBuffer.empty(), 0
    # A cap on attempts keeps a broken expert from looping forever; the prefix property keeps runs reproducible.
    seeds = episode_seeds(seed, 2 * n_episodes + 100)
    with tqdm(total=n_episodes, desc=f"collect {env_id}", unit="episode", disable=not progress) as bar:
        for episode_seed in seeds:
            episode, success = run_episode(env, expert, int(episode_seed))
            if success or keep_failures:
                buffer.add_episode(episode)
                bar.update()
            failures += not success
            bar.set_postfix(failures=failures, refresh=False)
            if buffer.n_episodes == n_episodes:
                env.close()
                return buffer, failures
    env.close()
    raise RuntimeError(
        f"the {env_id} expert failed {failures} of {len(seeds)} episodes; collected only {buffer.n_episodes}"
    )
