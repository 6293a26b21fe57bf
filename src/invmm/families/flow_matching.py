"""Flow matching, what SD3 and Flux share (their modules: sd3.py, flux.py).

Forward process x_s = s * eps + (1 - s) * x0, with s one of the model's training sigmas, drawn by index
uniformly per sample; the transformer predicts the velocity v ~ eps - x0, so x0_hat = x_s - s * v. The success
check samples with the scheduler's Euler steps from s = 1.
"""

from __future__ import annotations

import copy

import torch

from invmm.families.base import ModelAdapter
from invmm.families.codecs import CodecImages

# The authors invert SD3.5 at 512 x 512 (latent 16 x 64 x 64), not at its native 1024: models whose native
# side is larger are measured at this side unless the user asks for another.
PAPER_RESOLUTION = 512


class FlowMatching(CodecImages, ModelAdapter):
    """What SD3 and Flux share: the forward process over the training sigmas `self.sigmas` (drawn by index) and
    the Euler check on the scheduler of the subclass's `sampler()`."""

    _euler_template = None  # the model's Euler scheduler, built at load time

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.sigmas), (n,), generator=generator, device=generator.device)

    def _sigma(self, idx: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.sigmas[idx.to(self.device)].reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = self._sigma(idx, x0.ndim)
        return s * eps + (1.0 - s) * x0

    def _euler(self, schedule: str):
        """A fresh Euler scheduler of the model's config: a copy of one built once, at load time (see
        noise_schedule.NoiseScheduleAdapter.sampler for why)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if schedule != "model":
            raise ValueError(f"flow matching checks use the model's Euler grid; got check schedule {schedule!r}")
        if self._euler_template is None:  # the first call comes from the subclass's __init__
            self._euler_template = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        return copy.deepcopy(self._euler_template)

    def check_timesteps(self, steps: int, schedule: str = "model") -> list[float]:
        return [round(float(t), 3) for t in self.sampler(steps, schedule).timesteps]

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond=None,
                 guidance: float | list[float] = 1.0,
                 generator: torch.Generator | None = None, schedule: str = "model") -> torch.Tensor:
        if eta:
            raise ValueError("the flow-matching Euler sampler is deterministic; eta must be 0")
        scheduler = self.sampler(steps, schedule)
        x = noise.to(self.device, torch.float32)
        for t in scheduler.timesteps:
            x = scheduler.step(self.guided_output(x, t.expand(len(x)), cond, guidance), t, x).prev_sample
        return self.decode(x)

    def uncond_embeddings(self, n: int):
        return tuple(c.expand(n, *c.shape[1:]) for c in self._uncond)
