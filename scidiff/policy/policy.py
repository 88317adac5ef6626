"""Diffusion Policy: a U-Net denoises a chunk of Tp actions conditioned on To observations (Chi et al. 2023).

The policy owns everything a checkpoint needs to act: the observation and action normalisers, the
observation encoders (camera images: scidiff.policy.vision), the U-Net and the noise-process settings.
Construction takes only plain values, so ``DiffusionPolicy(**policy.config())`` rebuilds it and ``save_policy`` /
``load_policy`` round-trip it through one safetensors file in the core's inference format (weights + JSON config
in the metadata; never pickle). A policy trained by ``scidiff train`` also records the Gymnasium id of its env (``env_id``), which rollouts default to.

``objective="regression"`` turns the same network into the direct-regression baseline: one forward pass with a
fixed zero input and time, trained by MSE on the normalised action chunk. ``objective="consistency"`` is a student
distilled from a diffusion teacher (``attach_teacher``) by the core's consistency distillation on the teacher's
DDIM grid of ``distill_steps`` times (every ``distill_stride``-th of them learned by the student); it acts with 1 or
2 network calls per chunk (Prasad et al. 2024).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scidiff.core import SamplerSpec, build_diffusion, consistency_grid
from scidiff.core.checkpoint import check_task, load_inference, save_inference

from .normalizer import MinMaxNormalizer
from .unet1d import ConditionalUnet1D
from .vision import VISION_DEFAULTS, ImageEncoder

__all__ = ["OBJECTIVES", "CHI_PROCESS", "POLICY_CONFIG_KEY", "DiffusionPolicy", "shift_plan", "save_policy",
           "load_policy"]

OBJECTIVES = ("diffusion", "regression", "consistency")
# Key of the policy's construction arguments inside a training run's config (the trainer's model.safetensors).
POLICY_CONFIG_KEY = "policy_config"
# Chi et al. (2023): 100 training steps, squaredcos_cap_v2 (cosine) schedule, epsilon prediction. Same schema as
# the ``process`` config section (conf/process/*.yaml), built by the core's build_diffusion.
CHI_PROCESS: dict[str, Any] = {
    "name": "vp", "schedule": "cosine", "num_steps": 100, "spacing": "leading", "prediction": "epsilon",
    "weighting": "none",
}


class _Shared:
    """A module held by reference: copy.deepcopy (the trainer's EMA copy of a student) shares it instead of copying."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo: dict) -> "_Shared":
        return self


class DiffusionPolicy(nn.Module):
    """Low-dim (and camera) observations -> action chunk: denoising (Chi et al. 2023) or MSE regression on one U-Net.

    ``cameras`` maps camera names to their stored frame shape (H, W, 3); each gets an ImageEncoder built from
    ``vision`` (width, crop, num_keypoints, feature_dim; defaults: Chi et al.'s ResNet-18). Without cameras the
    policy is the low-dim one, unchanged.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        down_dims: list[int] | tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 256,
        objective: str = "diffusion",
        process: dict[str, Any] | None = None,
        clip_sample: float | None = 1.0,
        env_id: str | None = None,
        distill_steps: int = 10,
        distill_stride: int = 1,
        cameras: dict[str, list[int] | tuple[int, ...]] | None = None,
        vision: dict[str, Any] | None = None,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: unknown {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"actions To-1 .. To-1+Ta-1 = {n_obs_steps - 1} .. {n_obs_steps + n_action_steps - 2} must lie inside "
                f"the predicted horizon of {horizon}"
            )
        self._config = dict(
            obs_dim=int(obs_dim), action_dim=int(action_dim), horizon=int(horizon), n_obs_steps=int(n_obs_steps),
            n_action_steps=int(n_action_steps), down_dims=[int(d) for d in down_dims], kernel_size=int(kernel_size),
            n_groups=int(n_groups), step_embed_dim=int(step_embed_dim), objective=objective,
            process=dict(CHI_PROCESS if process is None else process),
            clip_sample=None if clip_sample is None else float(clip_sample), env_id=env_id,
            distill_steps=int(distill_steps), distill_stride=int(distill_stride),
            cameras={str(k): [int(d) for d in v] for k, v in (cameras or {}).items()},
            vision={**VISION_DEFAULTS, **(vision or {})} if cameras else None,
        )
        self.obs_dim, self.action_dim, self.horizon = obs_dim, action_dim, horizon
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.objective, self.clip_sample, self.env_id = objective, clip_sample, env_id
        self.distill_steps, self.distill_stride = int(distill_steps), int(distill_stride)
        self._teacher: _Shared | None = None  # neither a submodule nor saved, and not copied into the EMA model
        self.diffusion = build_diffusion(self._config["process"])
        self.process = self.diffusion.process

        self.obs_normalizer = MinMaxNormalizer(obs_dim)
        self.action_normalizer = MinMaxNormalizer(action_dim)
        # Cameras (name -> stored frame shape H, W, C): one encoder each, as Chi et al. (no weights shared between
        # views); a list, not a dict of modules, because dataset keys such as LeRobot's "observation.image" have dots.
        self.cameras = {k: tuple(v) for k, v in self._config["cameras"].items()}
        for name, shape in self.cameras.items():
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"cameras.{name}: frames are (H, W, 3) RGB, got shape {list(shape)}")
        self.image_encoders = nn.ModuleList(ImageEncoder(**self._config["vision"]) for _ in self.cameras)
        step_dim = obs_dim + sum(encoder.feature_dim for encoder in self.image_encoders)
        # Each of the To steps' features (camera features ‖ normalised low-dim obs) are flattened into the FiLM
        # conditioning vector.
        self.obs_encoder = nn.Flatten(start_dim=1)
        self.unet = ConditionalUnet1D(
            action_dim, horizon, global_cond_dim=n_obs_steps * step_dim, down_dims=down_dims,
            kernel_size=kernel_size, n_groups=n_groups, step_embed_dim=step_embed_dim,
        )

    def config(self) -> dict[str, Any]:
        """The JSON-able construction arguments: DiffusionPolicy(**config()) rebuilds this architecture."""
        return json.loads(json.dumps(self._config))

    @torch.no_grad()
    def fit_normalizers(self, obs: Tensor | Any, action: Tensor | Any) -> "DiffusionPolicy":
        """Fit the min-max limits on observation rows (..., obs_dim) and action rows (..., action_dim)."""
        self.obs_normalizer.fit(obs)
        self.action_normalizer.fit(action)
        return self

    def _condition(self, obs: Tensor, images: dict[str, Tensor] | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Encoded conditioning (B, To * step_dim) from the first To observations: each camera's features, then the
        normalised low-dim observation. Cameras crop at random in training (drawn from ``generator``), centrally in eval."""
        if obs.ndim != 3 or obs.shape[1] < self.n_obs_steps or obs.shape[2] != self.obs_dim:
            raise ValueError(
                f"obs must have shape (batch, >= n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}), "
                f"got {tuple(obs.shape)}"
            )
        steps = [self.obs_normalizer(obs[:, : self.n_obs_steps])]
        if self.cameras:
            missing = sorted(set(self.cameras) - set(images or {}))
            if missing:
                raise ValueError(f"this policy sees camera(s) {', '.join(map(repr, missing))}; the observation has "
                                 f"{sorted(images or {}) or 'no images'}")
            features = []
            for (name, shape), encoder in zip(self.cameras.items(), self.image_encoders):
                frames = images[name]
                if frames.ndim != 5 or tuple(frames.shape[2:]) != shape or frames.shape[1] < self.n_obs_steps:
                    raise ValueError(f"camera {name!r}: expected frames of shape (batch, >= {self.n_obs_steps}, "
                                     f"{', '.join(map(str, shape))}) (H, W, RGB as recorded), got {tuple(frames.shape)}")
                b = frames.shape[0]
                flat = frames[:, : self.n_obs_steps].reshape(b * self.n_obs_steps, *shape)
                features.append(encoder(flat, generator).reshape(b, self.n_obs_steps, -1))
            steps = features + steps
        return self.obs_encoder(torch.cat(steps, dim=-1))

    def _network(self, cond: Tensor):
        """The core's net(x, t) with this batch's conditioning closed over."""
        return lambda x, t: self.unet(x, t, global_cond=cond)

    def _regress(self, cond: Tensor) -> Tensor:
        """Regression baseline: the U-Net at a fixed zero input and zero time."""
        x = cond.new_zeros(cond.shape[0], self.horizon, self.action_dim)
        return self.unet(x, cond.new_zeros(cond.shape[0]), global_cond=cond)

    def attach_teacher(self, teacher: "DiffusionPolicy") -> "DiffusionPolicy":
        """Set the frozen diffusion policy a consistency student is distilled from (not part of its weights)."""
        if self.objective != "consistency" or teacher.objective != "diffusion":
            raise ValueError("attach_teacher: a 'consistency' student distils a 'diffusion' teacher, got "
                             f"{self.objective!r} from {teacher.objective!r}")
        self._teacher = _Shared(teacher.eval().requires_grad_(False))
        return self

    def learned_times(self) -> list[float]:
        """The grid times a consistency student was distilled at (every distill_stride-th of the teacher's DDIM grid)."""
        return self.process.sampling_times(self.distill_steps)[consistency_grid(self.distill_steps,
                                                                                self.distill_stride)].tolist()

    def check_warm_start(self, sampler: SamplerSpec, t_start: float | None) -> None:
        """Refuse a warm start (SDEdit from t_start) that a consistency student cannot take: it maps to x0 only from
        the times it learnt, and a second call would fall on the part-way grid, whose times are not the distillation
        grid's. Any start is fine for a diffusion policy's samplers."""
        if self.objective != "consistency" or sampler.name != "consistency":
            return
        learned, calls = self.learned_times(), sampler.options.get("calls", 1)
        if t_start not in learned or calls != 1:
            raise ValueError(f"a warm-started consistency student takes 1 call at a time it learnt, {learned} "
                             f"(distill_steps={self.distill_steps}, distill_stride={self.distill_stride}); "
                             f"got t_start={t_start}, {calls} call(s)")

    def default_sampler(self) -> SamplerSpec:
        """How this policy acts unless told otherwise: one consistency call for a student, DDIM-10 for a teacher."""
        if self.objective == "consistency":
            return SamplerSpec("consistency", self.distill_steps, {"calls": 1})
        return SamplerSpec("ddim", 10)

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Scalar training loss on a batch {"obs": (B, >=To, obs_dim), "action": (B, Tp, action_dim)}."""
        if batch["action"].ndim != 3 or batch["action"].shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"action must have shape (batch, horizon={self.horizon}, action_dim={self.action_dim}), "
                f"got {tuple(batch['action'].shape)}"
            )
        cond = self._condition(batch["obs"], batch.get("images"), generator)
        action = self.action_normalizer(batch["action"])
        if self.objective == "regression":
            return nn.functional.mse_loss(self._regress(cond), action)
        if self.objective == "consistency":
            if self._teacher is None:
                raise ValueError("a consistency policy trains against a teacher: call attach_teacher first")
            teacher = self._teacher.module.to(action.device)
            teacher_cond = teacher._condition(batch["obs"], batch.get("images"))
            teach = teacher.diffusion.denoiser(teacher._network(teacher_cond), clip=teacher.clip_sample)
            return self.diffusion.consistency_loss(self._network(cond), teach, action, self.distill_steps,
                                                   stride=self.distill_stride, generator=generator)
        return self.diffusion.loss(self._network(cond), action, generator=generator)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The training loss (so that DistributedDataParallel, which hooks forward, wraps the policy)."""
        return self.compute_loss(batch, generator)

    def sampler_spec(self, sampler: SamplerSpec | str | None, steps: int | None, options: dict[str, Any]) -> SamplerSpec:
        """The SamplerSpec predict_action runs for these arguments; a student's "consistency" steps are its network calls."""
        default = self.default_sampler()
        if isinstance(sampler, SamplerSpec):
            spec = sampler
        else:
            name = default.name if sampler is None else sampler
            if steps is None and name == default.name:
                return SamplerSpec(default.name, default.steps, {**default.options, **options})
            spec = SamplerSpec(name, 10 if steps is None else steps, options)
        if self.objective == "consistency" and spec.name == "consistency" and "calls" not in spec.options:
            spec = SamplerSpec("consistency", self.distill_steps, {"calls": spec.steps})
        return spec

    @torch.no_grad()
    def predict_action(
        self, obs_history: Tensor, sampler: SamplerSpec | str | None = None, steps: int | None = None,
        images: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None, warm_start: Tensor | None = None, t_start: float | None = None,
        **sampler_options: Any,
    ) -> dict[str, Tensor]:
        """Predict Tp actions from (B, To, obs_dim) observations (and, for a camera policy, ``images``: camera name ->
        (B, To, H, W, 3) uint8 frames); "action" holds the Ta to execute, To-1 .. To+Ta-2 (Chi et al. 2023).

        ``sampler`` is a SamplerSpec, or a sampler name that ``steps`` and ``sampler_options`` complete (default:
        ``default_sampler()``). For a consistency student, "consistency" with N steps means N network calls on the
        grid it was distilled on. ``warm_start`` (B, Tp, action_dim), e.g. the previous plan shifted by Ta
        (``shift_plan``), is noised to process time ``t_start`` and denoised from there (SDEdit, Meng et al. 2022)
        instead of sampling from pure noise; a student takes it in one call at one of its ``learned_times()``.
        """
        if obs_history.ndim != 3 or obs_history.shape[1] != self.n_obs_steps:
            raise ValueError(
                f"obs_history must have shape (batch, n_obs_steps={self.n_obs_steps}, obs_dim={self.obs_dim}), "
                f"got {tuple(obs_history.shape)}"
            )
        cond = self._condition(obs_history, images)
        if self.objective == "regression":
            naction = self._regress(cond)
        else:
            sampler = self.sampler_spec(sampler, steps, sampler_options)
            shape = (cond.shape[0], self.horizon, self.action_dim)
            start = {}
            if warm_start is not None:
                self.check_warm_start(sampler, t_start)
                start = {"x_start": self.action_normalizer(warm_start.to(cond.device, cond.dtype)), "t_start": t_start}
            naction = self.diffusion.sample(self._network(cond), shape, sampler, clip=self.clip_sample,
                                            generator=generator, device=cond.device, dtype=cond.dtype, **start).x
        action_pred = self.action_normalizer.unnormalize(naction)
        start = self.n_obs_steps - 1
        return {"action_pred": action_pred, "action": action_pred[:, start : start + self.n_action_steps]}


def shift_plan(action_pred: Tensor, n_action_steps: int) -> Tensor:
    """The previous plan moved on by the Ta executed steps, its last action repeated at the end: the next chunk's
    warm start."""
    tail = action_pred[:, -1:].expand(-1, n_action_steps, -1)
    return torch.cat([action_pred[:, n_action_steps:], tail], dim=1)


def save_policy(policy: DiffusionPolicy, path: str | os.PathLike, run_config: dict[str, Any] | None = None,
                half: bool = False) -> Path:
    """Write weights, normalisers and config in the core's inference format (safetensors + JSON config), atomically.

    ``half`` stores the network's parameters in float16 (half the file; load_policy casts them back to float32).
    Buffers stay as they are: the normalisers' ranges are in pixels, where float16 would round to 0.25.
    """
    state = policy.state_dict()
    config = {**(run_config or {}), "task": "policy", POLICY_CONFIG_KEY: policy.config()}
    if half:
        params = dict(policy.named_parameters()).keys()
        state = {k: v.half() if k in params else v for k, v in state.items()}
        config["parameters_dtype"] = "float16"
    return save_inference(path, state, config)


def load_policy(path: str | os.PathLike, device: torch.device | str = "cpu") -> DiffusionPolicy:
    """Rebuild a policy from save_policy's file or a policy run's model.safetensors (EMA weights), strictly."""
    state, run_config = load_inference(path, device)
    # save_policy files written before it recorded the task have none: their policy config marks them.
    if "task" in run_config:
        check_task(path, run_config, "policy")
    if POLICY_CONFIG_KEY not in run_config:
        raise ValueError(f"{path}: a scidiff weights file, but not of a policy (no '{POLICY_CONFIG_KEY}' in its config)")
    policy = DiffusionPolicy(**run_config[POLICY_CONFIG_KEY]).to(device)
    policy.load_state_dict(state, strict=True)
    return policy.eval()
