"""Closed-loop evaluation of a policy in vectorised Gymnasium envs with receding-horizon control (Chi et al. 2023).

Every ``n_action_steps`` env steps the policy sees the last To observations of each env, predicts Tp actions and
the env executes Ta of them. Episode i starts from ``reset(seed=seed + i)`` (Chi et al.'s PushT test seeds are
100000..100049). An episode's score is its maximum reward (PushT: clip(coverage / 0.95, 0, 1), so the mean over
episodes is Chi et al.'s "average max coverage"); success means ``info["is_success"]`` at some step.

Gymnasium 1.x vector envs reset a finished sub-env on the step *after* termination, returning a fresh episode's
observation; we read rewards and infos at the terminating step and stop counting that env from then on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from scidiff.core import SamplerSpec

from .policy import shift_plan

__all__ = [
    "EpisodeResult",
    "gym_pusht_keypoint_obs",
    "PushTKeypointsAdapter",
    "make_env",
    "ObservationReader",
    "rollout",
    "summarize",
]

GYM_PUSHT_PREFIX = "gym_pusht/"


@dataclass
class EpisodeResult:
    """One evaluation episode: its seed, score (max reward), success, length and max coverage (PushT only)."""

    seed: int
    max_reward: float
    success: bool
    steps: int
    max_coverage: float | None = None


def gym_pusht_keypoint_obs(state: np.ndarray) -> np.ndarray:
    """Chi et al.'s 20-d keypoint observation (9 block keypoints ‖ agent xy) from a 5-d PushT state [agent, block pose]."""
    from envs.pusht import block_keypoints

    state = np.asarray(state, dtype=np.float64)
    if state.shape[-1] != 5:
        raise ValueError(f"a PushT state has 5 entries [agent_x, agent_y, block_x, block_y, block_angle], got {state.shape}")
    # The keypoints are a rigid transform of the block pose, so the angle's mod-2π wrap in the state is harmless.
    return np.concatenate([block_keypoints(state[2:5]).ravel(), state[:2]])


class PushTKeypointsAdapter(gym.ObservationWrapper):
    """Turns a state-observation PushT env (e.g. gym-pusht's obs_type='state') into the 20-d keypoints observation."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = getattr(env.observation_space, "shape", None)
        if shape != (5,):
            raise ValueError(f"the keypoints adapter needs a 5-d state observation space, got {env.observation_space}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(20,), dtype=np.float64)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return gym_pusht_keypoint_obs(observation)


def make_env(env_id: str, render_mode: str | None = None, obs_dim: int | None = None, cameras: bool = False,
             **kwargs: Any) -> gym.Env:
    """One env by Gymnasium id (kwargs go to gym.make); gym-pusht ids get obs_type='pixels_agent_pos' for a camera
    policy, else obs_type='state' and, for a 20-d policy, the keypoints adapter."""
    import envs  # noqa: F401  (registers the scidiff ids)

    if env_id.startswith(GYM_PUSHT_PREFIX):
        try:
            import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
        except ImportError as err:
            raise ValueError(f"env {env_id!r} needs the gym-pusht package (pip install gym-pusht; pymunk < 7)") from err
        if cameras:  # gym-pusht renders its pixel observations only in rgb_array mode
            return gym.make(env_id, obs_type="pixels_agent_pos", render_mode="rgb_array", **kwargs)
        env = gym.make(env_id, obs_type="state", render_mode=render_mode, **kwargs)
        return PushTKeypointsAdapter(env) if obs_dim == 20 else env
    if env_id not in gym.registry:
        raise ValueError(f"unknown env {env_id!r}; registered scidiff ids: {[k for k in gym.registry if 'scidiff' in k]}")
    return gym.make(env_id, render_mode=render_mode, **kwargs)


class ObservationReader:
    """Splits a vector env's observations into the policy's inputs: low-dim (n, obs_dim) float32 and, for a camera
    policy, camera name -> (n, H, W, 3) uint8 frames.

    A Dict observation's image entries (H, W, 3) feed the policy's cameras (by name, or the only image to the only
    camera: PushT-pixels' "pixels" is the recorded "img"); its other entries, in key order, are the low-dim part.
    """

    def __init__(self, space: gym.Space, policy: Any, env_id: str):
        cameras = dict(getattr(policy, "cameras", {}) or {})
        self.images: dict[str, str] = {}
        if isinstance(space, gym.spaces.Dict):
            image_keys = [k for k, sub in space.spaces.items() if len(sub.shape or ()) == 3]
            self.low = [k for k in space.spaces if k not in image_keys]
            if len(image_keys) == 1 and len(cameras) == 1:
                self.images = {next(iter(cameras)): image_keys[0]}
            else:
                missing = sorted(set(cameras) - set(image_keys))
                if missing:
                    raise ValueError(f"the policy sees camera(s) {missing}; env {env_id!r} observes images "
                                     f"{image_keys or 'none'}")
                self.images = {name: name for name in cameras}
            for name, key in self.images.items():
                if tuple(space[key].shape) != tuple(cameras[name]):
                    raise ValueError(f"env {env_id!r} renders {key!r} as {space[key].shape}, the policy's camera "
                                     f"{name!r} was trained on {tuple(cameras[name])} frames")
            low_dim = sum(int(np.prod(space[k].shape)) for k in self.low)
            if low_dim != policy.obs_dim:
                raise ValueError(f"env {env_id!r} gives {low_dim}-d low-dim observations {self.low}, the policy "
                                 f"expects {policy.obs_dim}-d")
        else:
            if cameras:
                raise ValueError(f"the policy sees camera(s) {sorted(cameras)}; env {env_id!r} gives only "
                                 f"{space.shape} vectors (use a pixels env, e.g. scidiff/PushT-pixels-v0)")
            self.low = None
            if tuple(space.shape) != (policy.obs_dim,):
                raise ValueError(f"env {env_id!r} gives observations of shape {space.shape}, the policy expects "
                                 f"({policy.obs_dim},)")

    def __call__(self, obs: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.low is None:
            return np.asarray(obs, dtype=np.float32), {}
        n = len(next(iter(obs.values())))
        low = np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(n, -1) for k in self.low], axis=1)
        return low, {name: np.asarray(obs[key], dtype=np.uint8) for name, key in self.images.items()}


def _check_actions(env: gym.vector.VectorEnv, action_dim: int, env_id: str) -> None:
    """Raise a clear error when the env's action size differs from the policy's."""
    act_shape = env.single_action_space.shape
    if act_shape != (action_dim,):
        raise ValueError(f"env {env_id!r} takes actions of shape {act_shape}, the policy predicts ({action_dim},)")


def _info_at(info: dict[str, Any], key: str, j: int) -> Any:
    """Entry j of a vector env's info key, or None where that sub-env did not report it."""
    if key not in info or not info.get(f"_{key}", np.ones(j + 1, bool))[j]:
        return None
    return info[key][j]


def rollout(
    policy: Any,
    env_id: str,
    episodes: int = 50,
    seed: int = 100000,
    sampler: SamplerSpec | str = "ddim",
    steps: int = 10,
    num_envs: int = 10,
    max_steps: int | None = None,
    video_episodes: int = 0,
    reset_options: Callable[[int], dict[str, Any] | None] | None = None,
    progress: bool = True,
    generator_seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    warm_start: float | None = None,
    action_steps: int | None = None,
) -> tuple[list[EpisodeResult], list[float], list[list[np.ndarray]]]:
    """Run `episodes` receding-horizon episodes (To obs -> Tp actions, execute Ta; Chi et al. 2023).

    `sampler` is a SamplerSpec, or a sampler name run for `steps` steps. Returns per-episode results, per-chunk
    latencies in seconds (one batched predict_action call each), and the RGB frames of the first `video_episodes`
    episodes. `env_kwargs` go to gym.make (e.g. goal_radius). With `warm_start` (a process time), every chunk after
    an episode's first starts from the previous plan shifted by Ta, noised to that time (SDEdit), not from noise.
    `action_steps` executes only the first that many of each chunk's Ta actions before replanning (default: all Ta).
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    action_steps = policy.n_action_steps if action_steps is None else action_steps
    if not 1 <= action_steps <= policy.n_action_steps:
        raise ValueError(f"action_steps must be in [1, the policy's n_action_steps={policy.n_action_steps}], "
                         f"got {action_steps}")
    if warm_start is not None and hasattr(policy, "check_warm_start"):  # refused now, not at an episode's 2nd chunk
        spec = sampler if isinstance(sampler, SamplerSpec) else policy.sampler_spec(sampler, steps, {})
        policy.check_warm_start(spec, warm_start)
    num_envs = min(num_envs, episodes)
    render = "rgb_array" if video_episodes > 0 else None
    obs_dim, action_dim, cameras = policy.obs_dim, policy.action_dim, bool(getattr(policy, "cameras", None))
    vec = gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id, render, obs_dim, cameras, **(env_kwargs or {})) for _ in range(num_envs)]
    )
    try:
        reader = ObservationReader(vec.single_observation_space, policy, env_id)
        _check_actions(vec, action_dim, env_id)
        limit = max_steps or vec.envs[0].spec.max_episode_steps or 300
        device = next(policy.parameters()).device
        generator = torch.Generator(device=device).manual_seed(generator_seed)
        results: list[EpisodeResult] = []
        latencies: list[float] = []
        frames: list[list[np.ndarray]] = []
        from tqdm.auto import tqdm

        with tqdm(total=episodes, desc=f"rollout {env_id}", unit="episode", disable=not progress) as bar:
            for first in range(0, episodes, num_envs):
                ids = list(range(first, min(first + num_envs, episodes)))
                wave = _run_wave(policy, vec, reader, [seed + i for i in ids], limit, sampler, steps, generator,
                                 record=[i < video_episodes for i in ids], reset_options=reset_options,
                                 latencies=latencies, bar=bar, warm_start=warm_start, action_steps=action_steps)
                results += wave[0]
                frames += [f for f, i in zip(wave[1], ids) if i < video_episodes]
    finally:
        vec.close()
    return results, latencies, frames


class _Tally:
    """Per-sub-env score bookkeeping of one wave: max reward, max coverage, success, length, still running."""

    def __init__(self, n: int, n_active: int, limit: int):
        self.limit = limit
        self.max_reward, self.max_cover = np.zeros(n), np.full(n, np.nan)
        self.success, self.length = np.zeros(n, dtype=bool), np.zeros(n, dtype=int)
        self.running = np.arange(n) < n_active

    def record(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, info: dict) -> list[int]:
        """Add one vector step to the running sub-envs; returns those that finished at this step."""
        finished = []
        for j in np.flatnonzero(self.running):
            self.length[j] += 1
            self.max_reward[j] = max(self.max_reward[j], float(reward[j]))
            cover = _info_at(info, "coverage", j)
            if cover is not None:
                self.max_cover[j] = np.nanmax([self.max_cover[j], float(cover)])
            self.success[j] |= bool(_info_at(info, "is_success", j) or False)
            if terminated[j] or truncated[j] or self.length[j] >= self.limit:
                self.running[j] = False
                finished.append(int(j))
        return finished

    def results(self, seeds: Sequence[int]) -> list[EpisodeResult]:
        return [
            EpisodeResult(int(s), float(self.max_reward[j]), bool(self.success[j]), int(self.length[j]),
                          None if np.isnan(self.max_cover[j]) else float(self.max_cover[j]))
            for j, s in enumerate(seeds)
        ]


def _run_wave(policy, vec, reader: ObservationReader, seeds: Sequence[int], limit: int, sampler: SamplerSpec | str, steps: int, generator,
              record: list[bool], reset_options, latencies: list[float],
              bar, warm_start: float | None, action_steps: int) -> tuple[list[EpisodeResult], list[list[np.ndarray]]]:
    """One batch of episodes, one per sub-env; sub-envs beyond len(seeds) run a throwaway episode and are ignored."""
    n = vec.num_envs
    all_seeds = [int(s) for s in seeds] + [int(seeds[-1]) + 1 + k for k in range(n - len(seeds))]
    # The vector reset also clears pending autoresets left by the previous wave's finished episodes.
    obs, _ = vec.reset(seed=all_seeds)
    if reset_options is not None:
        # Vector envs take one options dict for all sub-envs, so per-seed options need per-env resets.
        obs = [env.reset(seed=s, options=reset_options(s))[0] for env, s in zip(vec.envs, all_seeds)]
        obs = {k: np.stack([o[k] for o in obs]) for k in obs[0]} if isinstance(obs[0], dict) else np.stack(obs)
    # Chi et al.'s MultiStepWrapper pads the observation history with the first observation.
    low, frames_now = reader(obs)
    history = np.repeat(low[:, None], policy.n_obs_steps, axis=1)
    image_history = {k: np.repeat(v[:, None], policy.n_obs_steps, axis=1) for k, v in frames_now.items()}
    tally = _Tally(n, len(seeds), limit)
    filming = [j for j, keep in enumerate(record) if keep]
    frames: list[list[np.ndarray]] = [[vec.envs[j].render()] if j in filming else [] for j in range(len(seeds))]
    device = next(policy.parameters()).device
    plan = None
    while tally.running.any():
        start = time.perf_counter()
        extra = {} if warm_start is None or plan is None else \
            {"warm_start": shift_plan(plan, action_steps), "t_start": warm_start}
        if image_history:  # only camera policies take images (scripted stand-ins need not)
            extra["images"] = {k: torch.from_numpy(v).to(device) for k, v in image_history.items()}
        out = policy.predict_action(torch.from_numpy(history).to(device), sampler=sampler, steps=steps,
                                    generator=generator, **extra)
        plan = out.get("action_pred")
        chunk = out["action"][:, :action_steps].cpu().numpy().astype(np.float64)
        latencies.append(time.perf_counter() - start)
        for k in range(action_steps):
            filmed = [j for j in filming if tally.running[j]]
            obs, reward, terminated, truncated, info = vec.step(chunk[:, k])
            bar.update(len(tally.record(reward, terminated, truncated, info)))
            for j in filmed:
                frames[j].append(vec.envs[j].render())
            low, frames_now = reader(obs)
            history = np.concatenate([history[:, 1:], low[:, None]], axis=1)
            image_history = {k: np.concatenate([v[:, 1:], frames_now[k][:, None]], axis=1)
                             for k, v in image_history.items()}
            if not tally.running.any():
                break
    return tally.results(seeds), frames


def summarize(results: Sequence[EpisodeResult], latencies: Sequence[float], **fields: Any) -> dict[str, Any]:
    """JSON summary: episodes, avg_max_coverage (PushT; Chi et al.'s metric), avg_max_reward, success_rate (also as
    LeRobot's pc_success, in %), latency."""
    rewards = np.array([r.max_reward for r in results])
    summary: dict[str, Any] = {
        **fields,
        "episodes": len(results),
        "avg_max_reward": float(rewards.mean()),
        "success_rate": float(np.mean([r.success for r in results])),
        "pc_success": 100.0 * float(np.mean([r.success for r in results])),
        "mean_chunk_latency_ms": 1000.0 * float(np.mean(latencies)) if latencies else None,
        "chunks": len(latencies),
    }
    if all(r.max_coverage is not None for r in results):
        # PushT's reward is clip(coverage / 0.95, 0, 1); its per-episode max, averaged, is the paper's score.
        summary["avg_max_coverage"] = summary["avg_max_reward"]
        summary["avg_max_raw_coverage"] = float(np.mean([r.max_coverage for r in results]))
    summary["per_episode"] = [asdict(r) for r in results]
    return summary
