"""The shared diffusion core: noise processes, parameterisations, samplers, loss and the training loop."""

from .loss import diffusion_loss
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
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)

__all__ = [
    "diffusion_loss", "PREDICTIONS", "WEIGHTINGS", "append_dims", "check_prediction", "edm_scalings",
    "loss_weight", "network_forward", "prediction_target", "prediction_to_x0", "x0_denoiser",
    "EDM", "Flow", "NoiseProcess", "VPDiscrete", "alphas_cumprod_from_betas", "cosine_betas", "linear_betas",
    "polynomial_alphas_cumprod", "SAMPLERS", "Pin", "SampleResult", "check_sampler", "sample", "sample_ddim",
    "sample_ddpm", "sample_dpmpp_2m", "sample_euler", "sample_heun",
]
