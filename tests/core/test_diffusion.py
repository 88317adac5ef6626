"""Diffusion and SamplerSpec: the object API is the functional path it wraps, draw for draw; load_run's task check."""

import pytest
import torch

from scidiff.core import SamplerSpec, build_diffusion, diffusion_loss, load_run, sample, x0_denoiser
from scidiff.core.checkpoint import save_inference
from scidiff.toy import MLPDenoiser

CONFIGS = [
    {"name": "vp", "prediction": "epsilon", "weighting": "min_snr", "min_snr_gamma": 2.0},
    {"name": "edm", "prediction": "edm", "weighting": "edm"},
    {"name": "flow", "prediction": "velocity"},
]


def tiny_net() -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(dim=2, hidden=16, depth=1, time_dim=8)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["name"])
def test_loss_is_diffusion_loss_with_the_same_draws(cfg):
    diffusion, net, x0 = build_diffusion(cfg), tiny_net(), torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(32) % 3 != 0).float()[:, None]
    ours = diffusion.loss(net, x0, generator=torch.Generator().manual_seed(5), loss_mask=mask)
    theirs = diffusion_loss(net, x0, diffusion.process, cfg["prediction"], cfg.get("weighting", "none"),
                            generator=torch.Generator().manual_seed(5), loss_mask=mask,
                            min_snr_gamma=cfg.get("min_snr_gamma", 5.0))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["name"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_denoiser_and_sample_are_the_functional_path(cfg, clip):
    diffusion, net = build_diffusion(cfg), tiny_net()
    x_t, t = torch.randn(8, 2), diffusion.process.sampling_times(4)[1].expand(8)
    old = x0_denoiser(net, diffusion.process, cfg["prediction"], clip=clip)
    with torch.no_grad():
        assert torch.equal(diffusion.denoiser(net, clip)(x_t, t), old(x_t, t))
        ours = diffusion.sample(net, (16, 2), SamplerSpec("ddim", 4, {"eta": 1.0}), clip=clip,
                                generator=torch.Generator().manual_seed(3))
        theirs = sample(old, (16, 2), diffusion.process, "ddim", 4, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert ours.nfe == theirs.nfe == 4 and torch.equal(ours.x, theirs.x)


def test_sampler_overrides_keep_options_only_for_the_same_sampler():
    heun = SamplerSpec("heun", 18, {"churn": 0.5})
    assert heun.with_overrides(steps=6) == SamplerSpec("heun", 6, {"churn": 0.5})
    assert heun.with_overrides(name="heun") == heun
    assert heun.with_overrides(name="ddim") == SamplerSpec("ddim", 18)
    assert heun.with_overrides() == heun
    with pytest.raises(ValueError, match="sampler.steps"):
        heun.with_overrides(steps=0)
    with pytest.raises(ValueError, match="sampler.name"):
        heun.with_overrides(name="ddin")


def test_load_run_refuses_weights_of_another_task(tmp_path):
    path = save_inference(tmp_path / "toy.safetensors", {"w": torch.ones(2)}, {"task": "toy", "model": {}})
    state, config = load_run(path, "toy")
    assert torch.equal(state["w"], torch.ones(2)) and config["task"] == "toy"
    with pytest.raises(ValueError, match=r"toy\.safetensors holds weights of task 'toy', not 'policy'"):
        load_run(path, "policy")
    untagged = save_inference(tmp_path / "untagged.safetensors", {"w": torch.ones(2)}, {"model": {}})
    with pytest.raises(ValueError, match="holds weights of task None, not 'toy'"):
        load_run(untagged, "toy")
