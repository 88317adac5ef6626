"""Starting a process from a given sample: a flow whose source is an informative distribution, and SDEdit.

Both against closed forms. Independent Gaussians x0 ~ N(mu0, s0^2), x1 ~ N(mu1, s1^2) on the flow path
x_t = (1 - t) x0 + t x1 have a linear posterior mean, and the probability-flow ODE from x1 is the monotone map
x0 = mu0 + s0 / s1 (x1 - mu1). For Gaussian data and a deterministic sampler, SDEdit from x_t0 = a x + s eps ends at
mu + sd / sqrt(a^2 sd^2 + s^2) (x_t0 - a mu).
"""

import pytest
import torch

from scidiff.core import EDM, Flow, VPDiscrete, alphas_cumprod_from_betas, cosine_betas, diffusion_loss, sample
from scidiff.toy import GaussianMixture

MU0, S0, MU1, S1 = torch.tensor([1.0, -2.0]), 0.3, torch.tensor([-0.5, 0.5]), 1.7


def gaussian(mu, s) -> GaussianMixture:
    return GaussianMixture(torch.ones(1), mu[None].double(), torch.tensor([s], dtype=torch.float64))


def bridge_denoiser(process):
    """Exact E[x0 | x_t] when eps is the source x1 = mu1 + s1 z: x_t - sigma mu1 = alpha x0 + (sigma s1) z."""
    target = gaussian(MU0, S0)

    def denoise(x_t, t):
        alpha, sigma = process.alpha(t), process.sigma(t)
        return target.x0_posterior_mean(x_t - sigma[:, None].to(x_t.dtype) * MU1.to(x_t.dtype), alpha, sigma * S1)

    return denoise


# Steps for a few 1e-4 (Heun converges at second order: 40 steps 7e-3, 160 steps 4.5e-4; the source is 5.7x wider
# than the target, a stiff map).
@pytest.mark.parametrize("sampler, steps, tol", [("heun", 160, 1e-3), ("euler", 1000, 3e-3), ("dpmpp_2m", 640, 1e-3)])
def test_flow_from_a_given_source_follows_the_exact_transport_map(sampler, steps, tol):
    process = Flow()
    g = torch.Generator().manual_seed(0)
    source = MU1 + S1 * torch.randn(512, 2, generator=g, dtype=torch.float64)
    out = sample(bridge_denoiser(process), source.shape, process, sampler, steps, source=source, dtype=torch.float64).x
    exact = MU0 + S0 / S1 * (source - MU1)
    assert (out - exact).abs().max() < tol


def test_the_loss_uses_the_source_in_place_of_noise():
    """x_t = (1 - t) x0 + t (source + noise); the velocity target is (source + noise) - x0 (flow matching)."""
    process = Flow()
    x0, source = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64) + 4.0
    seen = {}

    def net(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    for noise in (0.0, 0.1):
        g = torch.Generator().manual_seed(3)
        loss = diffusion_loss(net, x0, process, "velocity", generator=g, source=source, source_noise=noise)
        g = torch.Generator().manual_seed(3)
        t = process.sample_train_t(64, generator=g)
        eps = source + noise * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        assert torch.allclose(seen["t"].double(), process.network_time(t).double())
        assert torch.allclose(seen["x_t"], (1 - t.double())[:, None] * x0 + t.double()[:, None] * eps)
        assert loss.item() == pytest.approx(((eps - x0) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="source has shape"):
        diffusion_loss(net, x0, process, "velocity", source=source[:3])


# The discrete VP table ends one table step from the clean end, where Heun's final Euler step costs ~sigma(0)
# = 6e-3 whatever the step count; DPM-Solver++ takes that step exactly.
@pytest.mark.parametrize("process, t_start, sampler", [
    (EDM(sigma_max=80.0), 1.5, "heun"), (Flow(), 0.6, "heun"),
    (VPDiscrete(alphas_cumprod_from_betas(cosine_betas(1000))), 400.0, "dpmpp_2m")], ids=["edm", "flow", "vp"])
def test_sdedit_from_an_intermediate_time_matches_the_closed_form(process, t_start, sampler):
    mu, sd = torch.tensor([0.7, -0.3]), 0.4
    data = gaussian(mu, sd)
    ts = process.sampling_times(200, t_start)
    assert ts[0].item() == pytest.approx(t_start) and process.sigma(ts[-1:]).item() == 0.0
    a, s = process.alpha(ts[:1]).item(), process.sigma(ts[:1]).item()
    g = torch.Generator().manual_seed(1)
    x_start, eps = torch.randn(256, 2, generator=g, dtype=torch.float64) * 2, torch.randn(256, 2, generator=g, dtype=torch.float64)
    out = sample(data.denoiser(process), x_start.shape, process, sampler, 200, t_start=t_start, x_start=x_start,
                 source=eps, dtype=torch.float64).x
    x_t0 = a * x_start + s * eps
    exact = mu + sd / (a**2 * sd**2 + s**2) ** 0.5 * (x_t0 - a * mu)
    assert (out - exact).abs().max() < 2e-3


def test_part_way_grids_and_their_errors():
    assert Flow().sampling_times(4, 0.5).tolist() == [0.5, 0.375, 0.25, 0.125, 0.0]
    assert EDM().sampling_times(3, 2.0)[0].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"t_start must lie in \(0, 1\] for process 'flow', got 1.5"):
        Flow().sampling_times(4, 1.5)
    with pytest.raises(ValueError, match="x_start has shape"):
        sample(lambda x, t: x, (4, 2), Flow(), "euler", 2, t_start=0.5, x_start=torch.zeros(3, 2))
