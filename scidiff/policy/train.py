"""The policy task of ``scidiff train``: demonstrations -> windows -> DiffusionPolicy -> the core's training loop.

Data flows one way: a replay buffer (PushT human data, or scripted-expert episodes recorded once and cached as
zarr) is split by episode (Chi et al. 2023: 90 training episodes, 2 % validation), the normalisers are fitted on
the training episodes only, and ``scidiff.core.train`` does the rest (EMA, resume, logging). The ``evaluate``
hook logs the validation loss and a few closed-loop rollout scores of the EMA policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scidiff.core.trainer import move_to

from .datasets import PolicyWindowDataset, parse_obs_key, split_datasets
from .policy import POLICY_CONFIG_KEY, DiffusionPolicy, load_policy

__all__ = ["load_buffer", "data_symmetry", "trained_env", "build_policy", "validation_loss", "eval_seed",
           "eval_schedule", "make_evaluate", "train_from_config"]

_POLICY_FIELDS = ("objective", "horizon", "n_obs_steps", "n_action_steps", "clip_sample", "vision")
# objective=consistency: the diffusion policy file, its DDIM grid, the student's stride along it, and optionally the
# policy file the student starts from (another architecture, e.g. a smaller U-Net; default: a copy of the teacher)
_DISTILL_FIELDS = ("teacher", "distill_steps", "distill_stride", "student")


def _buffer_keys(data: dict[str, Any]) -> list[str]:
    """The replay-buffer arrays that the observations, cameras and actions read (so unused images are never loaded)."""
    return sorted({parse_obs_key(k).key for k in data["obs_keys"]} | set(data.get("camera_keys") or ())
                  | {data["action_key"]})


def load_buffer(data: dict[str, Any], out_dir: str | Path):
    """The demonstrations of the ``data`` section: 'pusht' human data, 'expert' episodes recorded once and cached,
    'zarr', any replay-buffer zarr of the user's, or 'lerobot', a local LeRobotDataset (v3) folder."""
    from envs.replay_buffer import ReplayBuffer

    keys = _buffer_keys(data)
    source = data.get("source")
    if source == "pusht":
        from scidiff.data import data_path

        return ReplayBuffer.load(data_path(data["path"]), keys=keys)
    if source == "expert":
        path = Path(data.get("path") or Path(out_dir) / "expert_data.zarr")
        if not path.exists():
            import envs  # noqa: F401  (registers the env ids)
            from envs.collect import collect_episodes

            buffer, _ = collect_episodes(data["env"], int(data["episodes"]), seed=int(data["seed"]))
            buffer.save(path)  # cached so a resumed run trains on exactly the same episodes
        return ReplayBuffer.load(path, keys=keys)
    if source == "zarr":
        # Users' own demonstrations: any replay-buffer zarr (data/<key> arrays + meta/episode_ends), path as given.
        return ReplayBuffer.load(Path(str(data["path"])).expanduser(), keys=keys)
    if source == "lerobot":
        # A LeRobotDataset (v3) folder: its feature names are the keys, e.g. obs_keys=[observation.state],
        # camera_keys=[observation.image]; only the named features (and their videos) are decoded.
        from envs.lerobot_dataset import load_lerobot

        return load_lerobot(Path(str(data["path"])).expanduser(), keys=keys)
    raise ValueError(
        f"data.source: unknown {source!r}; choose 'pusht' (human demonstrations under the data root), "
        "'expert' (scripted, recorded once), 'zarr' (your own replay-buffer zarr at data.path) or 'lerobot' (a "
        "LeRobotDataset folder at data.path)"
    )


def data_symmetry(data: dict[str, Any]):
    """The symmetry the ``data`` section asks to train with: ``mirror: true`` adds every training episode's mirror
    image about PushT's goal axis (envs.pusht.mirror_recording); None when it asks for none."""
    if not data.get("mirror"):
        return None
    if data.get("source") != "pusht" and "PushT" not in str(data.get("env") or ""):
        raise ValueError(f"data.mirror: the mirror image is PushT's symmetry (source 'pusht' or a PushT env); this "
                         f"data section has source {data.get('source')!r}")
    from envs.pusht import mirror_recording

    return mirror_recording


def trained_env(cfg: dict[str, Any]) -> str | None:
    """The Gymnasium id a policy config trains for: its closed-loop eval env, else the env that recorded its data."""
    return (cfg["policy"].get("eval") or {}).get("env") or cfg["data"].get("env")


def build_policy(cfg: dict[str, Any], obs_dim: int, action_dim: int,
                 cameras: dict[str, list[int]] | None = None) -> DiffusionPolicy:
    """A DiffusionPolicy from the ``policy`` (with ``vision`` for camera policies), ``model`` (U-Net widths) and
    ``process`` sections, with its env; ``cameras`` are the data's camera keys and frame shapes."""
    section = cfg["policy"]
    unknown = sorted(set(section) - set(_POLICY_FIELDS) - set(_DISTILL_FIELDS) - {"eval"})
    if unknown:
        raise ValueError(f"policy: unknown field(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(_POLICY_FIELDS + _DISTILL_FIELDS)}, eval")
    if section.get("objective") == "consistency":
        student = distillation_student(section)
        if (student.obs_dim, student.action_dim) != (obs_dim, action_dim):
            raise ValueError(f"policy.teacher observes {student.obs_dim}-d and acts {student.action_dim}-d, the data "
                             f"gives {obs_dim}-d observations (data.obs_keys) and {action_dim}-d actions")
        return student
    if section.get("vision") and not cameras:
        raise ValueError("policy.vision configures camera encoders, but data.camera_keys names no camera")
    return DiffusionPolicy(obs_dim, action_dim, **{k: section[k] for k in _POLICY_FIELDS if k in section},
                           **cfg["model"], process=cfg["process"], env_id=trained_env(cfg), cameras=cameras)


def distillation_student(section: dict[str, Any]) -> DiffusionPolicy:
    """A consistency student with ``policy.teacher`` attached, initialised as a copy of the teacher or, with
    ``policy.student``, of that policy file (its architecture and weights: a smaller U-Net makes a faster student);
    the student always takes the teacher's normalisers, and its windowing and noise process must agree with it."""
    teacher = _policy_file(section, "teacher")
    config = teacher.config()
    for key in ("horizon", "n_obs_steps", "n_action_steps"):
        if key in section and int(section[key]) != config[key]:
            raise ValueError(f"policy.{key}={section[key]} differs from the teacher's {config[key]} "
                             f"({section['teacher']})")
    start = _policy_file(section, "student") if section.get("student") else teacher
    if start is not teacher:
        start_config = start.config()
        # The student learns the teacher's map on the teacher's grid, in the teacher's normalised action space.
        for key in ("obs_dim", "action_dim", "horizon", "n_obs_steps", "n_action_steps", "process", "clip_sample",
                    "cameras"):
            if start_config[key] != config[key]:
                raise ValueError(f"policy.student ({section['student']}) has {key}={start_config[key]}, the teacher "
                                 f"({section['teacher']}) {config[key]}: a student must match its teacher's {key}")
        config = start_config
    config.update(objective="consistency", distill_steps=int(section.get("distill_steps", 10)),
                  distill_stride=int(section.get("distill_stride", 1)), env_id=teacher.env_id)
    student = DiffusionPolicy(**config)
    student.load_state_dict(start.state_dict())
    for name in ("obs_normalizer", "action_normalizer"):
        getattr(student, name).load_state_dict(getattr(teacher, name).state_dict())
    return student.attach_teacher(teacher)


def _policy_file(section: dict[str, Any], field: str) -> DiffusionPolicy:
    """The policy saved at ``policy.<field>``, with an error naming the setting when there is none."""
    path = section.get(field)
    if not path:
        raise ValueError(f"policy.{field}: objective=consistency distils a trained diffusion policy; give its file")
    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"policy.{field}: no file at {path}")
    return load_policy(path)


@torch.no_grad()
def validation_loss(policy: DiffusionPolicy, dataset: PolicyWindowDataset, batch_size: int = 256,
                    max_windows: int = 2048, seed: int = 0) -> float:
    """Mean training loss over (at most max_windows of) the validation windows, with fixed noise draws."""
    device = next(policy.parameters()).device
    n = min(len(dataset), max_windows)
    total = 0.0
    for start in range(0, n, batch_size):
        batch = move_to(dataset.get_batch(np.arange(start, min(start + batch_size, n))), device)
        noise = torch.Generator(device=device).manual_seed(seed + start)
        total += float(policy.compute_loss(batch, noise)) * len(batch["action"])
    return total / max(n, 1)


# Keys of a policy.eval.samplers section that say where and when it is scored, not how it samples.
_EVAL_ONLY_KEYS = ("seed", "from_step", "every")


def _eval_section(spec: dict[str, Any], label: str) -> dict[str, Any]:
    """The ``policy.eval.samplers`` section logged under ``label`` ("ddpm100" or "ddpm100/"); {} for the run's own."""
    return ((spec.get("samplers") or {}).get(label.rstrip("/")) or {}) if label else {}


def eval_seed(spec: dict[str, Any], label: str = "") -> int:
    """The first episode seed of the rollouts logged under ``label`` ("" for the run's own sampler, else a
    ``policy.eval.samplers`` label) in the ``policy.eval`` section ``spec``: that section's own ``seed``, else
    ``policy.eval.seed``."""
    return int(_eval_section(spec, label).get("seed", spec.get("seed", 1000)))


def eval_schedule(spec: dict[str, Any], label: str = "") -> tuple[int, int]:
    """(from_step, every): the sampler logged under ``label`` is scored at the evaluations (every
    ``trainer.eval_every`` steps) whose step is at least ``from_step`` and a multiple of ``every`` (0: all of them).
    Each is its section's own, else ``policy.eval``'s, else 0."""
    section, schedule = _eval_section(spec, label), []
    for key in ("from_step", "every"):
        value = section.get(key, spec.get(key, 0))
        if not isinstance(value, int) or value < 0:
            where = f"samplers.{label.rstrip('/')}." if key in section else ""
            raise ValueError(f"policy.eval.{where}{key} must be a step number >= 0, got {value!r}")
        schedule.append(value)
    return schedule[0], schedule[1]


def make_evaluate(cfg: dict[str, Any], val: PolicyWindowDataset):
    """The trainer's evaluate(ema_policy, step) hook: validation loss plus a few rollouts (policy.eval section).

    The rollouts use the ``sampler`` section; ``policy.eval.samplers`` (label -> sampler section) scores the same
    weights with other samplers too, logged as ``<label>/avg_max_reward`` etc., so one training run compares samplers
    checkpoint by checkpoint (e.g. Chi et al.'s DDPM next to DDIM-10). Such a section may also name its own first
    episode ``seed``: the same weights are then scored on other initial states, e.g. validation seeds on which to
    choose a checkpoint or a schedule without looking at the test seeds. And it may name a ``from_step``: an expensive
    sampler (Chi et al.'s DDPM-100) is then scored only at the checkpoints from that step on, e.g. the last 10 that
    the protocol averages, and an ``every``: scored only at the steps that are multiples of it, so one run can score a
    cheap sampler every 300 steps and an expensive one at finer spacing near the end (``eval_schedule``)."""
    from scidiff.core import build_sampler

    from .rollout import rollout, summarize

    spec = cfg["policy"].get("eval") or {}
    # log prefix -> (sampler, first episode seed, (first step scored, scored at multiples of))
    runs = {"": (build_sampler(cfg["sampler"]), eval_seed(spec), eval_schedule(spec))}
    for label, section in (spec.get("samplers") or {}).items():
        if not str(label).isidentifier():
            raise ValueError(f"policy.eval.samplers: label {label!r} must be a name (letters, digits, _)")
        sampler = build_sampler({k: v for k, v in section.items() if k not in _EVAL_ONLY_KEYS})
        runs[f"{label}/"] = (sampler, eval_seed(spec, label), eval_schedule(spec, label))
    episodes = int(spec.get("episodes", 0))
    num_envs = int(spec.get("num_envs", episodes))

    def evaluate(policy: nn.Module, step: int) -> dict[str, float]:
        policy.eval()
        scores = {"val_loss": validation_loss(policy, val)} if len(val) else {}
        if episodes and spec.get("env"):
            for prefix, (sampler, first_seed, (from_step, every)) in runs.items():
                if step < from_step or (every and step % every):
                    continue
                results, latencies, _ = rollout(policy, spec["env"], episodes=episodes, seed=first_seed,
                                                sampler=sampler, num_envs=num_envs, progress=False)
                summary = summarize(results, latencies)
                scores.update({prefix + k: summary[k] for k in ("avg_max_reward", "success_rate")
                               if summary.get(k) is not None})
        return scores

    return evaluate


def _identity(batch: Any) -> Any:
    """Collate for datasets whose __getitems__ already returns a stacked batch."""
    return batch


def train_from_config(cfg: dict[str, Any]):
    """Train a diffusion (or regression) policy on the configured demonstrations with the shared loop (Chi et al. 2023)."""
    from scidiff.core.trainer import TrainConfig, train

    trainer_cfg = TrainConfig.from_mapping(cfg["trainer"])
    data, section = cfg["data"], cfg["policy"]
    buffer = load_buffer(data, trainer_cfg.out_dir)
    train_set, val_set = split_datasets(
        buffer, horizon=int(section["horizon"]), n_obs_steps=int(section["n_obs_steps"]),
        n_action_steps=int(section["n_action_steps"]), obs_keys=list(data["obs_keys"]), action_key=data["action_key"],
        val_ratio=float(data.get("val_ratio", 0.0)), max_train_episodes=data.get("max_train_episodes"),
        seed=int(data.get("split_seed", 42)), camera_keys=list(data.get("camera_keys") or ()),
        symmetry=data_symmetry(data),
    )
    del buffer  # the windows hold what they read (a float copy of PushT's frames would stay alive otherwise)
    policy = build_policy(cfg, train_set.obs_dim, train_set.action_dim, train_set.camera_shapes)
    if policy.objective != "consistency":  # a student keeps its teacher's normalisers
        rows = train_set.episode_rows()  # fitted on training episodes only: validation stays unseen
        policy.fit_normalizers(train_set.obs[rows], train_set.action[rows])

    def loss_fn(net: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        return net(batch, generator)  # forward == compute_loss, so a DDP wrapper syncs gradients

    run_config = {**cfg, POLICY_CONFIG_KEY: policy.config()}
    return train(policy, train_set, loss_fn, trainer_cfg, collate_fn=_identity,
                 evaluate=make_evaluate(cfg, val_set), run_config=run_config)
