"""Samplers against exact answers: Gaussian and Gaussian-mixture data have closed-form denoisers."""

import math

import pytest
import torch

from scidiff.core import EDM, SAMPLERS, Flow, Pin, VPDiscrete, alphas_cumprod_from_betas, cosine_betas, sample
from scidiff.toy import GaussianMixture, mixture_report, ring_mixture

# Samplers of a denoiser's own ODE/SDE; "consistency" needs a consistency model (tests/core/test_consistency.py).
DENOISER_SAMPLERS = [name for name in SAMPLERS if name != "consistency"]

PROCESSES = {
    # Trailing spacing starts at t = T - 1; 'leading' starts lower and leaks alpha(t_0) * E[x0] (Lin et al. 2024).
    "vp": lambda: VPDiscrete(alphas_cumprod_from_betas(cosine_betas(1000)), spacing="trailing"),
    "edm": EDM,
    "flow": Flow,
}
# A modest step count per sampler: first-order ones need more (Heun's N steps cost 2N - 1 evaluations).
STEPS = {"ddpm": 200, "ddim": 100, "dpmpp_2m": 25, "heun": 25, "euler": 100}


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("sampler", DENOISER_SAMPLERS)
def test_mixture_weights_and_modes(process_name, sampler):
    """Mode weights within 0.03 total variation, >= 98% of samples in a mode, mode spread within 20%."""
    process = PROCESSES[process_name]()
    mixture = ring_mixture(8, radius=1.0, std=0.1, weights=[1, 2, 1, 2, 1, 2, 1, 2])
    g = torch.Generator().manual_seed(0)
    result = sample(mixture.denoiser(process), (8000, 2), process, sampler, STEPS[sampler], generator=g,
                    dtype=torch.float64)
    report = mixture_report(result.x, mixture)
    assert report["mode_weight_tv"] < 0.03, report
    assert report["in_mode_fraction"] > 0.98, report
    assert report["mode_std_rel_error"] < 0.2, report


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("sampler", DENOISER_SAMPLERS)
def test_gaussian_moments(process_name, sampler):
    """A 2-D Gaussian N(mu, 0.5^2 I): mean within 0.02 and std within 5% (0.5% sampling error at n = 20000)."""
    process = PROCESSES[process_name]()
    gaussian = GaussianMixture(torch.ones(1), torch.tensor([[1.0, -0.5]]), torch.tensor([0.5]))
    g = torch.Generator().manual_seed(1)
    x = sample(gaussian.denoiser(process), (20000, 2), process, sampler, STEPS[sampler], generator=g,
               dtype=torch.float64).x
    assert (x.mean(0) - gaussian.means[0]).abs().max() < 0.02
    assert (x.std(0) / 0.5 - 1).abs().max() < 0.05


def _exact_flow_map(x_start, t0, process, mu, s):
    """The probability-flow ODE for N(mu, s^2) data maps x(t0) to mu + (x(t0) - a0 mu) * s / sqrt(a0^2 s^2 + s0^2)."""
    a0, s0 = process.alpha(t0).item(), process.sigma(t0).item()
    return mu + (x_start - a0 * mu) * s / math.sqrt(a0**2 * s**2 + s0**2)


@pytest.mark.parametrize("process_name,sampler,order", [
    ("edm", "euler", 1), ("edm", "heun", 2), ("flow", "euler", 1), ("flow", "heun", 2), ("edm", "dpmpp_2m", 2),
    ("flow", "dpmpp_2m", 2),
])
def test_ode_convergence_order(process_name, sampler, order):
    """Error against the exact ODE solution falls as N^-order (Euler first order, Heun and DPM-Solver++(2M) second)."""
    process = PROCESSES[process_name]()
    mu, s = 0.7, 0.5
    gaussian = GaussianMixture(torch.ones(1), torch.tensor([[mu]]), torch.tensor([s]))
    x_start = torch.linspace(-3, 3, 64, dtype=torch.float64)[:, None]
    errors = []
    ns = [16, 32, 64, 128, 256]
    for n in ns:
        ts = process.sampling_times(n)
        x1 = SAMPLERS[sampler](gaussian.denoiser(process), x_start * process.sigma(ts[:1]).item(), ts, process).x
        exact = _exact_flow_map(x_start * process.sigma(ts[:1]).item(), ts[:1], process, mu, s)
        errors.append((x1 - exact).abs().max().item())
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(len(ns) - 1)]
    observed = sum(slopes[-2:]) / 2
    assert abs(observed - order) < 0.35, (errors, slopes)


def test_nfe_counts():
    process = EDM()
    d = ring_mixture().denoiser(process)
    x = torch.randn(4, 2, dtype=torch.float64) * 80
    ts = process.sampling_times(10)
    assert SAMPLERS["heun"](d, x, ts, process).nfe == 19  # 2N - 1 (Karras et al. 2022)
    for name in ("ddpm", "ddim", "dpmpp_2m", "euler"):
        assert SAMPLERS[name](d, x, ts, process).nfe == 10


def test_graph_rows_and_projection():
    """Graph batches: each node gets its graph's time; a zero-mean projection per graph holds after sampling."""
    process = EDM()
    batch = torch.tensor([0, 0, 0, 1, 1])
    seen = []

    def denoise(x, t):
        seen.append(t.shape)
        return 0.5 * x

    def remove_mean(x):
        means = torch.zeros(2, x.shape[1], dtype=x.dtype).index_add_(0, batch, x)
        means = means / torch.bincount(batch, minlength=2)[:, None]
        return x - means[batch]

    g = torch.Generator().manual_seed(0)
    x = sample(denoise, (5, 3), process, "heun", 5, generator=g, project=remove_mean, dtype=torch.float64).x
    assert all(shape == (5,) for shape in seen)
    assert torch.allclose(remove_mean(x), x, atol=1e-12)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_pin_holds_known_entries(sampler):
    """Inpainting: pinned entries end exactly at their known values; the rest follow the conditional."""
    process = Flow()
    mixture = ring_mixture(4, radius=1.0, std=0.05)
    value = torch.zeros(500, 2, dtype=torch.float64)
    value[:, 0] = 1.0
    mask = torch.zeros(500, 2, dtype=torch.bool)
    mask[:, 0] = True
    g = torch.Generator().manual_seed(0)
    x = sample(mixture.denoiser(process), (500, 2), process, sampler, 30, generator=g, dtype=torch.float64,
               pin=Pin(mask, value)).x
    assert torch.equal(x[:, 0], value[:, 0])


def test_churn_stays_correct():
    """Heun with stochastic churn still samples the target (Karras et al. 2022, Alg. 2)."""
    process = EDM()
    mixture = ring_mixture(8, weights=[1, 2, 1, 2, 1, 2, 1, 2])
    g = torch.Generator().manual_seed(0)
    x = sample(mixture.denoiser(process), (8000, 2), process, "heun", 25, generator=g, dtype=torch.float64,
               churn=10.0, churn_tmin=0.05, churn_tmax=50.0).x
    report = mixture_report(x, mixture)
    assert report["mode_weight_tv"] < 0.03 and report["in_mode_fraction"] > 0.98, report


def test_determinism_per_generator():
    process = VPDiscrete(alphas_cumprod_from_betas(cosine_betas(1000)))
    d = ring_mixture().denoiser(process)
    runs = [sample(d, (100, 2), process, "ddpm", 20, generator=torch.Generator().manual_seed(5)).x for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
