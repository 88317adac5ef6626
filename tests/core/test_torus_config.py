"""The torus process through the config layer: `process=torus` builds a score-model Diffusion whose loss, denoiser and
sampler are the torus ones, and samplers that are not wrap-safe are refused by name."""

from __future__ import annotations

import math

import pytest
import torch

from scidiff.core import TORUS_SAMPLERS, TorusProcess, build_diffusion, build_sampler, torus_score_loss
from scidiff.core.config import compose, to_container


def test_process_torus_config_builds_a_score_diffusion():
    cfg = to_container(compose(["process=torus", "sampler=heun"]))
    diffusion = build_diffusion(cfg["process"])
    assert isinstance(diffusion.process, TorusProcess)
    assert (diffusion.prediction, diffusion.weighting) == ("score", "score_norm")
    assert diffusion.process.sigma_min == pytest.approx(0.01 * math.pi) and diffusion.process.sigma_max == pytest.approx(math.pi)
    assert build_sampler(cfg["sampler"], diffusion.process).name == "heun"
    with pytest.raises(ValueError, match="prediction: score, weighting: score_norm"):
        build_diffusion({"name": "torus", "prediction": "epsilon"})
    with pytest.raises(ValueError, match="unknown field.*rho"):
        build_diffusion({"name": "torus", "rho": 7.0})


@pytest.mark.parametrize("name", ["dpmpp_2m", "consistency"])
def test_samplers_that_are_not_wrap_safe_are_refused(name):
    diffusion = build_diffusion({"name": "torus"})
    with pytest.raises(ValueError, match=f"sampler.name: '{name}' cannot sample the torus process.*euler, heun, ddim, ddpm"):
        build_sampler({"name": name, "steps": 10}, diffusion.process)
    spec = build_sampler({"name": name, "steps": 10})  # without a process: any sampler is a valid config
    with pytest.raises(ValueError, match="cannot sample the torus"):
        diffusion.sample(lambda x, sigma: -x, (4,), spec)
    if name == "dpmpp_2m":
        with pytest.raises(ValueError, match="other side of the \\+-pi wrap"):
            build_sampler({"name": name, "steps": 10}, diffusion.process)


def test_diffusion_loss_and_sampling_are_the_torus_ones():
    diffusion = build_diffusion({"name": "torus"})
    x0 = torch.rand(64) * 2 * math.pi - math.pi
    score = lambda x, sigma: -torch.sin(x) / sigma  # noqa: E731 - any score model of (x, sigma)
    ours = diffusion.loss(score, x0, generator=torch.Generator().manual_seed(3))
    theirs = torus_score_loss(score, x0, diffusion.process, generator=torch.Generator().manual_seed(3))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for name in TORUS_SAMPLERS:
        x = diffusion.sample(score, (256,), build_sampler({"name": name, "steps": 8}, diffusion.process),
                             generator=torch.Generator().manual_seed(0)).x
        assert x.shape == (256,) and bool(((x > -math.pi) & (x <= math.pi)).all())  # wrapped by default
