"""Noise processes, parameterisation conversions, loss weights and config validation."""

import pytest
import torch

from scidiff.core import (
    EDM,
    Flow,
    VPDiscrete,
    alphas_cumprod_from_betas,
    cosine_betas,
    linear_betas,
    loss_weight,
    polynomial_alphas_cumprod,
    prediction_target,
    prediction_to_x0,
)
from scidiff.core.config import build_diffusion, build_sampler

VP = VPDiscrete(alphas_cumprod_from_betas(cosine_betas(1000)))
PAIRS = [(VP, "epsilon"), (VP, "x0"), (VP, "v"), (EDM(), "edm"), (EDM(), "epsilon"), (EDM(), "velocity"),
         (Flow(), "velocity"), (Flow(), "v"), (Flow(), "x0")]


def test_cosine_betas_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(cosine_betas(1000).float(), sched.betas, atol=1e-7)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    assert torch.allclose(linear_betas(1000).float(), sched.betas, atol=1e-9)


def test_terminal_signal_of_schedules():
    """Residual signal at the last step: abar_T ~ 4e-5 (linear) and ~2.4e-9 (cosine), as reported by Lin et al. 2024."""
    assert alphas_cumprod_from_betas(linear_betas(1000))[-1].item() == pytest.approx(4.0e-5, rel=0.05)
    assert alphas_cumprod_from_betas(cosine_betas(1000))[-1].item() == pytest.approx(2.4e-9, rel=0.1)


def test_polynomial_schedule():
    abar = polynomial_alphas_cumprod(1000, power=2.0, precision=1e-5)
    assert abar.shape == (1000,) and bool((abar[1:] <= abar[:-1]).all())
    assert abar[-1].item() == pytest.approx(1e-5, rel=1e-3)  # the precision floor at t = T
    assert abar[0].item() > 0.999


def test_vp_interpolation_is_exact_at_integers_and_continuous():
    t = torch.arange(-1, 1000, dtype=torch.float64)
    abar = torch.cat([torch.ones(1, dtype=torch.float64), VP.alphas_cumprod])
    assert torch.allclose(VP.alpha(t) ** 2, abar, rtol=1e-12)
    assert torch.allclose(VP.alpha(t) ** 2 + VP.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    mid = torch.tensor([10.5], dtype=torch.float64)
    assert VP.alpha(torch.tensor([11.0])) < VP.alpha(mid) < VP.alpha(torch.tensor([10.0]))


@pytest.mark.parametrize("process", [VP, EDM(), Flow()], ids=lambda p: p.name)
def test_t_from_sigma_tilde_inverts(process):
    t = process.sampling_times(20)[1:-2]
    st = process.sigma(t) / process.alpha(t)
    assert torch.allclose(process.t_from_sigma_tilde(st), t, atol=1e-2 if process is VP else 1e-10)


@pytest.mark.parametrize("process", [VP, EDM(), Flow()], ids=lambda p: p.name)
def test_derivatives_match_finite_differences(process):
    t = process.sampling_times(9)[1:-2] + 0.3 * (process is VP)  # VP: inside a linear piece
    h = 1e-6
    for f, df in ((process.alpha, process.d_alpha), (process.sigma, process.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("process,prediction", PAIRS, ids=lambda x: getattr(x, "name", x))
def test_target_then_x0_round_trip(process, prediction):
    """prediction_to_x0(target(x0, eps)) recovers x0: the conversions are each other's inverse."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(50, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(50, 3, generator=g, dtype=torch.float64)
    t = process.sampling_times(25)[1:-1].repeat(3)[:50]
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    x_t = alpha * x0 + sigma * eps
    raw = prediction_target(x0, eps, t, process, prediction)
    assert torch.allclose(prediction_to_x0(raw, x_t, t, process, prediction), x0, atol=1e-8)


@pytest.mark.parametrize("process,prediction", PAIRS, ids=lambda x: getattr(x, "name", x))
def test_min_snr_weight_is_min_snr_in_x0_space(process, prediction):
    """A target-space error scaled by loss_weight equals min(SNR, 5) times the induced x0-space error."""
    t = process.sampling_times(30)[1:-1]
    alpha, sigma = process.alpha(t), process.sigma(t)
    x0 = torch.zeros(len(t), 1, dtype=torch.float64)
    eps = torch.ones(len(t), 1, dtype=torch.float64)
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    target = prediction_target(x0, eps, t, process, prediction)
    perturbed = target + 1e-3
    dx0 = prediction_to_x0(perturbed, x_t, t, process, prediction) - x0
    w = loss_weight(process, t, prediction, "min_snr").double()
    lhs = w * (perturbed - target)[:, 0] ** 2
    rhs = ((alpha / sigma) ** 2).clamp(max=5.0) * dx0[:, 0] ** 2
    assert torch.allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("cfg,field", [
    ({"name": "flow", "prediction": "epsilon"}, "process.prediction"),
    ({"name": "vp", "prediction": "edm"}, "process.prediction"),
    ({"name": "vp", "prediction": "velocity"}, "process.prediction"),
    ({"name": "vp", "prediction": "score"}, "process.prediction"),
    ({"name": "vp", "weighting": "snr+"}, "process.weighting"),
    ({"name": "vp", "schedule": "sigmoid"}, "process.schedule"),
    ({"name": "ve"}, "process.name"),
    ({"name": "vp", "spacing": "uniform"}, "process.spacing"),
    ({"name": "edm", "sigma_min": 0.0}, "process.sigma_min"),
    ({"name": "flow", "shfit": 2.0}, "shfit"),
])
def test_bad_process_config_names_the_field(cfg, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_diffusion(cfg)


@pytest.mark.parametrize("cfg,field", [
    ({"name": "ddin", "steps": 10}, "sampler.name"),
    ({"name": "ddim", "steps": 0}, "sampler.steps"),
    ({"name": "ddim", "steps": -3}, "sampler.steps"),
    ({"name": "ddim", "steps": 2.5}, "sampler.steps"),
    ({"name": "ddim"}, "sampler.steps"),
    ({"name": "ddpm", "steps": 10, "eta": 0.5}, "sampler.eta"),
    ({"name": "heun", "steps": 10, "churnn": 1.0}, "sampler.churnn"),
])
def test_bad_sampler_config_names_the_field(cfg, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build_sampler(cfg)


def test_good_configs_build():
    assert build_sampler({"name": "heun", "steps": 18, "churn": 0.0}).options == {"churn": 0.0}
    d = build_diffusion({"name": "vp", "schedule": "polynomial", "num_steps": 500})
    assert d.process.num_steps == 500 and d.prediction == "epsilon"


def test_too_many_steps_for_discrete_process():
    with pytest.raises(ValueError, match="sampler.steps=2000 exceeds"):
        VP.sampling_times(2000)
