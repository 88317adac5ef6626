"""The torus process against exact answers: the wrapped normal's score and score norm, and the core's samplers run
with ``project=wrap`` on a wrapped-normal mixture, whose noised density is again a wrapped-normal mixture."""

import math

import pytest
import torch

from scidiff.core import (TORUS_SAMPLERS, TorusProcess, sample, score_denoiser, score_norm, torus_score_loss, wrap,
                          wrapped_normal_log_prob, wrapped_normal_score)

# Three modes on the 2-D torus (the 1-D case uses the first coordinate); the third sits across the wrap at +-pi in
# both angles, so samples must cross the chart's edge to find it.
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-1.5, 2.0], [1.0, -0.5], [math.pi - 0.15, math.pi - 0.3]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.4, 0.25], dtype=torch.float64)
N_SAMPLES = 8000
# Images k = -5..5 are exact to double precision for every std the samplers meet (<= 1.5 pi with churn).
N_TERMS = 5


def mixture_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact score of the data noised to sigma: sum_k w_k prod_d WN(x_d; mu_kd, s_k^2 + sigma^2)."""
    d = x.shape[1]
    offset = x[:, None, :] - MEANS[None, :, :d]
    std = (STDS[None, :] ** 2 + sigma[:, None].to(torch.float64) ** 2).sqrt()[..., None]
    log_joint = WEIGHTS.log() + wrapped_normal_log_prob(offset, std, N_TERMS).sum(-1)
    responsibility = torch.softmax(log_joint, dim=-1)[..., None]
    return (responsibility * wrapped_normal_score(offset, std, N_TERMS)).sum(1)


def mixture_samples(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return wrap(MEANS[k, :d] + STDS[k, None] * torch.randn(n, d, generator=generator, dtype=torch.float64))


def nearest_mode(x: torch.Tensor) -> torch.Tensor:
    """Index of the closest mixture mean in torus distance."""
    d = x.shape[-1]
    return (wrap(x[..., None, :] - MEANS[:, :d]) ** 2).sum(-1).argmin(-1)


def exact_statistics(d: int, grid: int = 512) -> torch.Tensor:
    """E[cos x_d], E[sin x_d] and the mass nearest each mode under the data density, by the periodic trapezoid rule."""
    axis = torch.linspace(-math.pi, math.pi, grid + 1, dtype=torch.float64)[1:]
    x = torch.stack(torch.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
    log_joint = WEIGHTS.log() + wrapped_normal_log_prob(x[:, None, :] - MEANS[:, :d], STDS[:, None], N_TERMS).sum(-1)
    density = log_joint.logsumexp(-1).exp()
    density = density / density.sum()
    return (density[:, None] * statistics(x)).sum(0)


def statistics(x: torch.Tensor) -> torch.Tensor:
    """Per sample: cos and sin of each angle, and one-hot of the nearest mode."""
    modes = torch.nn.functional.one_hot(nearest_mode(x), len(WEIGHTS)).to(torch.float64)
    return torch.cat([x.cos(), x.sin(), modes], dim=-1)


def check_against_exact(x: torch.Tensor, d: int, tolerance_se: float = 4.0) -> torch.Tensor:
    """Each statistic's sample mean within ``tolerance_se`` standard errors of its exact value; returns the z-scores."""
    assert bool((x > -math.pi).all()) and bool((x <= math.pi).all()), "a sample left (-pi, pi]"
    values = statistics(x)
    z = (values.mean(0) - exact_statistics(d)) / (values.std(0) / math.sqrt(len(x))).clamp_min(1e-12)
    assert bool((z.abs() < tolerance_se).all()), f"z-scores {z.tolist()}"
    return z


def test_wrap_range():
    x = torch.tensor([math.pi, -math.pi, 3 * math.pi, -3 * math.pi, 0.0, -1e-20, 7.0, -7.0, 1e6], dtype=torch.float64)
    y = wrap(x)
    assert bool((y > -math.pi).all()) and bool((y <= math.pi).all())
    assert y[:4].tolist() == [math.pi] * 4
    assert torch.allclose(torch.cos(y), torch.cos(x)) and torch.allclose(torch.sin(y), torch.sin(x), atol=1e-9)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.0, math.pi, 5.0])
def test_wrapped_normal_score_is_gradient_of_log_density(sigma):
    x = torch.linspace(-math.pi + 1e-3, math.pi, 101, dtype=torch.float64)
    h = 1e-5 * min(sigma, 1.0)
    finite_difference = (wrapped_normal_log_prob(x + h, sigma) - wrapped_normal_log_prob(x - h, sigma)) / (2 * h)
    score = wrapped_normal_score(x, sigma)
    assert torch.allclose(score, finite_difference, rtol=1e-6, atol=1e-6 / sigma**2)
    # the density integrates to one over a period
    mass = 2 * math.pi * wrapped_normal_log_prob(torch.linspace(-math.pi, math.pi, 4097, dtype=torch.float64)[1:], sigma).exp().mean()
    assert abs(mass.item() - 1) < 1e-9
    # periodic, and finite far from the origin at small sigma (log-sum-exp: no 0/0)
    assert torch.allclose(wrapped_normal_score(x + 2 * math.pi, sigma), score, atol=1e-8 / sigma**2)
    assert bool(torch.isfinite(wrapped_normal_score(torch.tensor([math.pi - 1e-9]), 0.01)).all())


@pytest.mark.parametrize("sigma", [0.01 * math.pi, 0.2, 0.7, 1.3, 2.0, math.pi])
def test_score_norm_matches_monte_carlo(sigma):
    g = torch.Generator().manual_seed(3)
    x = wrap(sigma * torch.randn(200_000, generator=g, dtype=torch.float64))
    squared = wrapped_normal_score(x, sigma) ** 2
    standard_error = squared.std() / math.sqrt(len(x))
    assert abs(score_norm(sigma).item() - squared.mean().item()) < 4 * standard_error.item()
    assert abs(score_norm(sigma).item() / squared.mean().item() - 1) < 0.01


def test_score_norm_limits():
    small = torch.tensor([1e-3, 0.05, 0.2])
    assert torch.allclose(score_norm(small), 1 / small.double() ** 2, rtol=1e-6)  # plain normal: E|x/sigma^2|^2
    assert score_norm(2 * math.pi).item() < 1e-15  # nearly uniform
    with pytest.raises(ValueError):
        score_norm(7.0)


def test_process_noise_levels():
    process = TorusProcess()
    sigma = process.sigma(process.sample_train_t(20000, generator=torch.Generator().manual_seed(0)).double())
    assert sigma.min() >= 0.01 * math.pi * (1 - 1e-6) and sigma.max() <= math.pi * (1 + 1e-6)
    u = (sigma / (0.01 * math.pi)).log() / math.log(100)  # log-uniform: u ~ U(0, 1)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    ts = process.sampling_times(10)
    assert ts[0].item() == pytest.approx(math.pi) and ts[-2].item() == pytest.approx(0.01 * math.pi) and ts[-1] == 0
    assert torch.allclose(ts[1:-1] / ts[:-2], (ts[1] / ts[0]).expand(9))  # geometric
    t = process.network_time(ts[:-1])
    assert t[0].item() == pytest.approx(1000) and t[-1].item() == pytest.approx(0, abs=1e-3)


# (sampler, steps, options): the probability-flow ODE (Euler, Heun), the reverse SDE (DDPM) and Heun with churn;
# DDIM is Euler on a variance-exploding process (test_ddim_is_euler).
RUNS = {
    "heun": ("heun", 20, {}),
    "euler": ("euler", 60, {}),
    "ddpm": ("ddpm", 100, {}),
    "heun_churn": ("heun", 25, {"churn": 10.0}),
}


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("run", list(RUNS))
def test_samplers_reproduce_mixture(d, run):
    """The samplers started from the exact noised marginal (the data plus sigma_max noise): circular moments and
    the mass of each mode within 4 standard errors of the exact values."""
    name, steps, options = RUNS[run]
    assert name in TORUS_SAMPLERS
    process = TorusProcess()
    g = torch.Generator().manual_seed(0)
    start = mixture_samples(N_SAMPLES, d, g)
    x = sample(score_denoiser(mixture_score, process), (N_SAMPLES, d), process, name, steps, generator=g,
               dtype=torch.float64, project=wrap, x_start=start, **options).x
    check_against_exact(x, d)


def test_ddim_is_euler():
    process = TorusProcess()
    runs = [sample(score_denoiser(mixture_score, process), (500, 2), process, name, 8, generator=torch.Generator().manual_seed(2),
                   dtype=torch.float64, project=wrap).x for name in ("ddim", "euler")]
    assert torch.allclose(runs[0], runs[1], atol=1e-12)


def test_sampling_from_noise_alone():
    """Generation proper, from wrapped N(0, pi^2) noise (close to uniform: its first Fourier coefficient is
    exp(-pi^2/2) = 0.007), reaches the same statistics."""
    process = TorusProcess()
    g = torch.Generator().manual_seed(1)
    x = sample(score_denoiser(mixture_score, process), (N_SAMPLES, 2), process, "heun", 20, generator=g,
               dtype=torch.float64, project=wrap).x
    check_against_exact(x, 2)


def test_score_loss_weighting():
    """A zero score has loss E|s|^2 / E|s|^2 = 1 at every noise level; the exact score of point-mass data (a wrapped
    normal around the point) has loss 0."""
    process = TorusProcess()
    x0 = torch.full((20000, 3), 2.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    zero = torus_score_loss(lambda x, s: torch.zeros_like(x), x0, process, generator=g)
    assert abs(zero.item() - 1) < 0.03, zero
    exact = torus_score_loss(lambda x, s: wrapped_normal_score(x - 2.5, s[:, None]), x0, process, generator=g)
    assert exact.item() < 1e-8
    # one sigma per graph with a batch index
    batch = torch.arange(20000) // 4
    per_graph = torus_score_loss(lambda x, s: torch.zeros_like(x), x0, process, generator=g, batch=batch, num_graphs=5000)
    assert abs(per_graph.item() - 1) < 0.05
