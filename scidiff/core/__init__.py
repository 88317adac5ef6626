"""The shared diffusion core: noise processes, parameterisations, samplers, loss and the training loop."""

from .checkpoint import load_run
from .config import build_diffusion, build_sampler
from .diffusion import Diffusion, SamplerSpec
from .loss import consistency_distillation_loss, consistency_grid, diffusion_loss
from .prediction import (
    PREDICTIONS,
    WEIGHTINGS,
    append_dims,
    check_prediction,
    edm_scalings,
    loss_weight,
    network_forward,
    prediction_target,
    prediction_to_x0,
    x0_denoiser,
)
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
from .samplers import (
    SAMPLERS,
    Pin,
    SampleResult,
    check_sampler,
    sample,
    sample_consistency,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from .torus import (
    TORUS_SAMPLERS,
    TorusProcess,
    check_torus_sampler,
    score_denoiser,
    score_norm,
    torus_score_loss,
    wrap,
    wrapped_normal_log_prob,
    wrapped_normal_score,
)
from .trainer import TrainConfig, train

__all__ = [
    "Diffusion", "SamplerSpec", "build_diffusion", "build_sampler", "load_run", "TrainConfig", "train",
    "diffusion_loss", "consistency_distillation_loss", "consistency_grid", "PREDICTIONS", "WEIGHTINGS", "append_dims",
    "check_prediction", "edm_scalings",
    "loss_weight", "network_forward", "prediction_target", "prediction_to_x0", "x0_denoiser",
    "EDM", "Flow", "NoiseProcess", "VPDiscrete", "alphas_cumprod_from_betas", "cosine_betas", "linear_betas",
    "polynomial_alphas_cumprod", "SAMPLERS", "Pin", "SampleResult", "check_sampler", "sample", "sample_consistency", "sample_ddim",
    "sample_ddpm", "sample_dpmpp_2m", "sample_euler", "sample_heun",
    "TORUS_SAMPLERS", "TorusProcess", "score_denoiser", "score_norm", "torus_score_loss", "wrap", "wrapped_normal_log_prob",
    "wrapped_normal_score", "check_torus_sampler",
]
