"""Configuration enters here and leaves as plain typed objects: Hydra composition plus validated builders."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

from .diffusion import Diffusion, SamplerSpec
from .prediction import check_prediction
from .process import (
    EDM,
    Flow,
    NoiseProcess,
    VPDiscrete,
    alphas_cumprod_from_betas,
    cosine_betas,
    linear_betas,
    polynomial_alphas_cumprod,
)
from .samplers import SAMPLERS, check_sampler
from .torus import TORUS_PREDICTION, TORUS_WEIGHTING, TorusProcess, check_torus_sampler

__all__ = ["build_diffusion", "build_process", "build_sampler", "compose", "compose_checked", "check_value_types",
           "config_dir", "to_container"]

_HOOKS = {"generator", "project", "pin"}


def _require(cfg: Mapping[str, Any], key: str, section: str) -> Any:
    if key not in cfg:
        raise ValueError(f"{section}.{key} is missing")
    return cfg[key]


def _check_fields(cfg: Mapping[str, Any], allowed: set[str], section: str) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{section}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def build_process(cfg: Mapping[str, Any]) -> NoiseProcess:
    """A noise process from the ``process`` config section."""
    name = _require(cfg, "name", "process")
    common = {"name", "prediction", "weighting", "min_snr_gamma"}
    if name == "vp":
        _check_fields(cfg, common | {"schedule", "num_steps", "spacing", "beta_start", "beta_end", "power", "precision"},
                      "process")
        schedule, num_steps = cfg.get("schedule", "cosine"), int(cfg.get("num_steps", 1000))
        if num_steps < 2:
            raise ValueError(f"process.num_steps must be >= 2, got {num_steps}")
        if schedule == "cosine":
            abar = alphas_cumprod_from_betas(cosine_betas(num_steps))
        elif schedule == "linear":
            abar = alphas_cumprod_from_betas(linear_betas(num_steps, cfg.get("beta_start", 1e-4), cfg.get("beta_end", 2e-2)))
        elif schedule == "polynomial":
            abar = polynomial_alphas_cumprod(num_steps, cfg.get("power", 2.0), cfg.get("precision", 1e-5))
        else:
            raise ValueError(f"process.schedule: unknown {schedule!r}; choose cosine, linear or polynomial")
        return VPDiscrete(abar, name=f"vp-{schedule}", spacing=cfg.get("spacing", "leading"))
    if name == "edm":
        keys = {"sigma_min", "sigma_max", "rho", "sigma_data", "p_mean", "p_std"}
        _check_fields(cfg, common | keys, "process")
        return EDM(**{k: float(cfg[k]) for k in keys if k in cfg})
    if name == "flow":
        _check_fields(cfg, common | {"t_sampling", "shift"}, "process")
        return Flow(t_sampling=cfg.get("t_sampling", "uniform"), shift=float(cfg.get("shift", 1.0)))
    if name == "torus":
        keys = {"sigma_min", "sigma_max"}
        _check_fields(cfg, {"name", "prediction", "weighting"} | keys, "process")
        return TorusProcess(**{k: float(cfg[k]) for k in keys if k in cfg})
    raise ValueError(f"process.name: unknown process {name!r}; choose vp, edm, flow or torus")


def build_diffusion(cfg: Mapping[str, Any]) -> Diffusion:
    """Process, prediction and weighting from the ``process`` section, checked for compatibility."""
    process = build_process(cfg)
    prediction = cfg.get("prediction", "epsilon")
    weighting = cfg.get("weighting", "none")
    if isinstance(process, TorusProcess):  # a score model with Jing et al.'s loss: no other parameterisation here
        prediction, weighting = cfg.get("prediction", TORUS_PREDICTION), cfg.get("weighting", TORUS_WEIGHTING)
        if (prediction, weighting) != (TORUS_PREDICTION, TORUS_WEIGHTING):
            raise ValueError(f"process.prediction/weighting: the torus process trains a score model with score_norm "
                             f"weighting (prediction: {TORUS_PREDICTION}, weighting: {TORUS_WEIGHTING}), got "
                             f"{prediction!r}, {weighting!r}")
        return Diffusion(process, prediction, weighting)
    try:
        check_prediction(process, prediction, weighting)
    except ValueError as err:  # name the config section, not just the concept
        raise ValueError(f"process.{err}") from None
    return Diffusion(process, prediction, weighting, float(cfg.get("min_snr_gamma", 5.0)))


def build_sampler(cfg: Mapping[str, Any], process: NoiseProcess | None = None) -> SamplerSpec:
    """A sampler from the ``sampler`` section; unknown names, steps < 1 and foreign options name the field, and so does
    a sampler that cannot run on ``process`` (on the torus only ``TORUS_SAMPLERS`` are wrap-safe)."""
    name = _require(cfg, "name", "sampler")
    steps = _require(cfg, "steps", "sampler")
    check_sampler(name, steps)
    if isinstance(process, TorusProcess):
        check_torus_sampler(name)
    params = inspect.signature(SAMPLERS[name]).parameters
    allowed = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - _HOOKS
    options = {k: v for k, v in cfg.items() if k not in ("name", "steps")}
    for key in options:
        if key not in allowed:
            raise ValueError(f"sampler.{key} is not an option of sampler {name!r} (options: {', '.join(sorted(allowed)) or 'none'})")
    return SamplerSpec(name, steps, options)


def config_dir() -> Path:
    """The project's ``conf/`` folder (beside the package in a source checkout or editable install)."""
    path = Path(__file__).resolve().parents[2] / "conf"
    if not path.is_dir():
        raise FileNotFoundError(f"Hydra configs not found at {path}; install scidiff from a checkout (pip install -e .)")
    return path


def compose(overrides: list[str] | None = None, config_name: str = "config") -> Any:
    """Compose the Hydra config with command-line style overrides (e.g. ``["experiment=mixture2d", "sampler=heun"]``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def to_container(cfg: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of an OmegaConf config (plain dicts pass through)."""
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _kind(value: Any) -> str | None:
    """The type a setting must keep: 'a boolean', 'an integer', 'a number' (int or float), or None (anything goes)."""
    if isinstance(value, bool):
        return "a boolean (true or false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return None


def check_value_types(cfg: Mapping[str, Any], base: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse a value whose type differs from the one the config files give that setting (``model.hidden=big`` where
    the files say 256; ``trainer.lr=fast``), naming it, so a typo fails here and not as a TypeError deep in a model."""
    for key, value in cfg.items():
        name, expected = f"{prefix}{key}", base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(expected, Mapping):
            check_value_types(value, expected, f"{name}.")
            continue
        kind = _kind(expected)
        if kind is None or value is None:
            continue
        ok = (isinstance(value, bool) if kind.startswith("a boolean") else
              isinstance(value, int) and not isinstance(value, bool) if kind == "an integer" else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{name} must be {kind} (the configs give {expected!r}), got {value!r}")


def compose_checked(overrides: list[str] | None = None) -> dict[str, Any]:
    """``compose`` resolved to a plain dict, with every ``key.sub=value`` override checked against the type the config
    files give that key (``check_value_types``); group choices (``process=flow``) pick the files compared against."""
    overrides = list(overrides or [])
    cfg = to_container(compose(overrides))
    groups = [o for o in overrides if "." not in o.split("=", 1)[0]]
    check_value_types(cfg, to_container(compose(groups)))
    return cfg
