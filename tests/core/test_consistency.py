"""Consistency distillation and multistep consistency sampling against exact answers.

For Gaussian data the teacher is exact (the posterior mean) and its DDIM trajectory through any grid point is a
known deterministic map, so the consistency function the loss should learn is computable: running the teacher's
DDIM from that grid time to the clean end. The loss is zero there and only there, and a trained student's
one-call sample lands where the teacher's DDIM-N solution from the same noise does.
"""

import pytest
import torch
from torch import nn

from scidiff.core import (
    EDM, Flow, VPDiscrete, alphas_cumprod_from_betas, consistency_distillation_loss, cosine_betas, sample,
    sample_ddim, x0_denoiser,
)
from scidiff.toy import GaussianMixture

MU, SD, STEPS = torch.tensor([0.6, -0.4]), 0.3, 8


def gaussian() -> GaussianMixture:
    return GaussianMixture(torch.ones(1), MU[None].double(), torch.tensor([SD], dtype=torch.float64))


def vp() -> VPDiscrete:
    return VPDiscrete(alphas_cumprod_from_betas(cosine_betas(100)), spacing="trailing")


def exact_consistency_function(teacher, process, steps):
    """f*(x, t_k) = the end of the teacher's DDIM run from grid time t_k down the rest of the grid (for any stride)."""
    ts = process.sampling_times(steps)

    def f(x, t):
        out = x.clone()
        for k in range(len(ts)):
            rows = t.to(torch.float64).cpu() == ts[k]
            if rows.any() and k < len(ts) - 1:
                out[rows] = sample_ddim(teacher, x[rows], ts[k:], process).x
        return out

    return f


@pytest.mark.parametrize("stride", [1, 4, STEPS])
@pytest.mark.parametrize("process", [vp(), Flow(), EDM(sigma_max=20.0)], ids=["vp", "flow", "edm"])
def test_the_loss_vanishes_exactly_at_the_teachers_consistency_function(process, stride):
    teacher = gaussian().denoiser(process)
    x0 = gaussian().sample(512, torch.Generator().manual_seed(0))
    exact = exact_consistency_function(teacher, process, STEPS)
    loss = consistency_distillation_loss(exact, teacher, x0, process, STEPS, stride=stride,
                                         generator=torch.Generator().manual_seed(1))
    assert loss.item() < 1e-20
    # The teacher's own denoiser is not consistent (its x0 estimate moves along the trajectory): the loss sees it.
    wrong = consistency_distillation_loss(teacher, teacher, x0, process, STEPS, stride=stride,
                                          generator=torch.Generator().manual_seed(1))
    assert wrong.item() > 1e-4
    with pytest.raises(ValueError, match="stride=3 must divide steps=8"):
        consistency_distillation_loss(exact, teacher, x0, process, STEPS, stride=3)


class LinearInX(nn.Module):
    """net(x, t) = a(t) x + b(t): the family the exact consistency function of Gaussian data lies in."""

    def __init__(self, dim: int = 2, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * dim))

    def forward(self, x, t):
        a, b = self.mlp((t.to(x.dtype) / 100.0)[:, None]).chunk(2, dim=-1)
        return (1 + a) * x + b


def test_a_distilled_student_matches_the_teachers_ode_solution_in_one_call():
    torch.manual_seed(0)
    process, data = vp(), gaussian()
    teacher = data.denoiser(process)
    net = LinearInX().double()
    student = x0_denoiser(net, process, "x0")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        loss = consistency_distillation_loss(student, teacher, data.sample(256, g), process, STEPS, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    noise = torch.randn(2048, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        one = sample(student, noise.shape, process, "consistency", STEPS, calls=1, source=noise, dtype=torch.float64)
        two = sample(student, noise.shape, process, "consistency", STEPS, calls=2, source=noise, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(6))
    ode = sample(teacher, noise.shape, process, "ddim", STEPS, source=noise, dtype=torch.float64).x
    assert one.nfe == 1 and two.nfe == 2
    # One call lands on the teacher's DDIM-8 solution from the same noise (data sd 0.3) ...
    assert (one.x - ode).abs().mean() < 0.02
    # ... and two calls (re-noised in between) land where the exact consistency function's two calls do. (Both
    # keep DDIM-8's own error: its samples have sd 0.22, not the data's 0.3; distillation copies the teacher's solver.)
    exact = sample(exact_consistency_function(teacher, process, STEPS), noise.shape, process, "consistency", STEPS,
                   calls=2, source=noise, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert (two.x - exact.x).abs().mean() < 0.02


def test_consistency_sampling_calls_the_network_at_evenly_spaced_grid_times_and_ends_clean():
    calls = []

    def denoise(x, t):
        calls.append(t[0].item())
        return torch.zeros_like(x)

    process = VPDiscrete(alphas_cumprod_from_betas(cosine_betas(100)))  # diffusers' leading grid 90, 80, .., 0
    out = sample(denoise, (4, 2), process, "consistency", 10, calls=2, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 2 and calls == [90.0, 40.0]
    assert torch.equal(out.x, torch.zeros(4, 2))  # the last jump is returned as is, not re-noised
    with pytest.raises(ValueError, match=r"sampler.calls must be an integer in \[1, steps=10\], got 11"):
        sample(denoise, (4, 2), process, "consistency", 10, calls=11)
