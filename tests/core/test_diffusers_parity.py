"""DDIM and DPM-Solver++(2M) agree with diffusers' schedulers on identical inputs (diffusers is a test-only dependency)."""

import pytest
import torch

from scidiff.core import VPDiscrete, alphas_cumprod_from_betas, cosine_betas, linear_betas, sample_ddim, sample_dpmpp_2m, x0_denoiser

diffusers = pytest.importorskip("diffusers")


def eps_net(x, t):
    """A smooth nonlinear stand-in network: eps_hat(x, t)."""
    return torch.tanh(x) * torch.cos(t[:, None] / 300.0) + 0.1 * x


def _process(schedule: str, spacing: str) -> VPDiscrete:
    betas = cosine_betas(1000) if schedule == "squaredcos_cap_v2" else linear_betas(1000)
    return VPDiscrete(alphas_cumprod_from_betas(betas), spacing=spacing)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
def test_spacing_matches_ddim_scheduler(spacing, steps):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ts = _process("linear", spacing).sampling_times(steps)
    assert ts[:-1].long().tolist() == sched.timesteps.tolist()
    assert ts[-1].item() == -1.0  # the clean end, diffusers' set_alpha_to_one


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [10, 12])
def test_ddim_matches_diffusers(schedule, spacing, eta, steps):
    if spacing == "trailing" and 1000 % steps:
        pytest.skip("diffusers steps to t - T // N, off its own trailing grid when N does not divide T (see below)")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=False,
                                    set_alpha_to_one=True, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x = x0.clone()
    for t in sched.timesteps:
        eps = eps_net(x, torch.full((x.shape[0],), float(t)))
        x = sched.step(eps, t, x, eta=eta, generator=gen).prev_sample
    process = _process(schedule, spacing)
    ours = sample_ddim(x0_denoiser(eps_net, process, "epsilon"), x0.clone(), process.sampling_times(steps), process,
                       eta=eta, generator=torch.Generator().manual_seed(1)).x
    assert torch.allclose(ours, x, atol=2e-5, rtol=1e-5), (ours - x).abs().max()


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m_matches_diffusers(schedule, steps):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=schedule,
                                                  algorithm_type="dpmsolver++", solver_order=2,
                                                  final_sigmas_type="zero", lower_order_final=True)
    sched.set_timesteps(steps)
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    x = x0.clone()
    for t in sched.timesteps:
        x = sched.step(eps_net(x, torch.full((x.shape[0],), float(t))), t, x).prev_sample
    process = _process(schedule, "linspace")
    ts = torch.cat([sched.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    ours = sample_dpmpp_2m(x0_denoiser(eps_net, process, "epsilon"), x0.clone(), ts, process).x
    assert torch.allclose(ours, x, atol=2e-5, rtol=1e-5), (ours - x).abs().max()


def test_diffusers_trailing_prev_timestep_is_off_grid():
    """Why trailing parity is checked only where N divides T: diffusers' DDIM steps from t to t - T // N."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(12)
    grid = sched.timesteps.tolist()
    diffusers_prev = [t - 1000 // 12 for t in grid[:-1]]
    assert diffusers_prev != grid[1:]  # e.g. 916 - 83 = 833, while the grid's next time is 832
    assert _process("linear", "trailing").sampling_times(12)[1:-1].long().tolist() == grid[1:]
