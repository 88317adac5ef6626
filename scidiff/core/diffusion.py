"""A diffusion model's fixed choices as two objects: the process with its parameterisation, and a sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .loss import consistency_distillation_loss, diffusion_loss
from .prediction import Denoiser, Network, x0_denoiser
from .process import NoiseProcess
from .samplers import SampleResult, check_sampler, sample
from .torus import TORUS_PREDICTION, TorusProcess, check_torus_sampler, score_denoiser, torus_score_loss, wrap

__all__ = ["Diffusion", "SamplerSpec"]


@dataclass(frozen=True)
class Diffusion:
    """A noise process with the network's parameterisation and the loss weighting.

    On the torus (``TorusProcess``, prediction 'score') the network is a score model ``net(x_t, sigma)`` of wrapped
    angles: the loss is ``torus_score_loss``, the sampler's denoiser ``score_denoiser`` and samples are wrapped to
    (-pi, pi] after every step (the samplers' ``project`` hook) unless another projection is given.
    """

    process: NoiseProcess
    prediction: str
    weighting: str = "none"
    min_snr_gamma: float = 5.0

    def loss(self, net: Network, x0: Tensor, **kwargs: Any) -> Tensor:
        """The denoising loss of ``net`` on clean ``x0``; kwargs go to diffusion_loss (generator=, batch=, ...), or to
        torus_score_loss on the torus (generator=, batch=, num_graphs=, loss_mask=)."""
        if self.prediction == TORUS_PREDICTION:
            return torus_score_loss(net, x0, self.process, **kwargs)
        return diffusion_loss(net, x0, self.process, self.prediction, self.weighting,
                              min_snr_gamma=self.min_snr_gamma, **kwargs)

    def consistency_loss(self, net: Network, teacher: Denoiser, x0: Tensor, steps: int, **kwargs: Any) -> Tensor:
        """Consistency distillation of ``teacher`` (an x0 denoiser) into ``net`` on this process's ``steps``-grid;
        kwargs go to consistency_distillation_loss (generator=, loss_mask=)."""
        return consistency_distillation_loss(self.denoiser(net), teacher, x0, self.process, steps, **kwargs)

    def denoiser(self, net: Network, clip: float | None = None) -> Denoiser:
        """The sampler's (x_t, t) -> x0 estimate of ``net``, optionally clipped to [-clip, clip] (not on the torus)."""
        if self.prediction == TORUS_PREDICTION:
            return score_denoiser(net, self.process)
        return x0_denoiser(net, self.process, self.prediction, clip=clip)

    def sample(self, net: Network, shape: tuple[int, ...], sampler: SamplerSpec, *, clip: float | None = None,
               **kwargs: Any) -> SampleResult:
        """Samples of ``net``'s model drawn with ``sampler``; kwargs go to the sampler (generator, device, pin, ...)."""
        if isinstance(self.process, TorusProcess):
            check_torus_sampler(sampler.name)
            kwargs.setdefault("project", wrap)
        return sampler.run(self.denoiser(net, clip), shape, self.process, **kwargs)


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler with its step count and options; ``run`` draws samples with it."""

    name: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)

    def run(self, denoise: Denoiser, shape: tuple[int, ...], process: NoiseProcess, **kwargs: Any) -> SampleResult:
        """Samples of ``denoise`` under ``process``; kwargs go to the sampler (generator, device, project, pin)."""
        return sample(denoise, shape, process, self.name, self.steps, **self.options, **kwargs)

    def with_overrides(self, name: str | None = None, steps: int | None = None) -> SamplerSpec:
        """This spec with another sampler and/or step count; options are kept only when the sampler name is unchanged.
        Validated with check_sampler."""
        name = self.name if name is None else name
        steps = self.steps if steps is None else steps
        check_sampler(name, steps)
        return SamplerSpec(name, steps, dict(self.options) if name == self.name else {})
