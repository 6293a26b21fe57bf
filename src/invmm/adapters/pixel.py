"""Unconditional pixel-space diffusion (DDPM/DDIM): a diffusers `UNet2DModel` plus a scheduler config.

The numerical path in one place: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the UNet's raw output
turned into x0_hat by the scheduler's `prediction_type`, and deterministic DDIM for generation.
"""

from __future__ import annotations

import torch

from invmm.conditioning import cond_cat
from invmm.functional import PREDICTION_TYPES, add_noise, x0_from_prediction

# The success check's DDIM grid in the InvMM authors' code: timesteps spaced from the end (999, 994, ..., 4
# for 200 steps), the last step landing on alpha_bar = 1, and no clipping of x0 between steps. "model" keeps
# whatever the model's scheduler config says (often a leading grid, and clip_sample=True for pixel DDPMs).
DDIM_GRIDS = {
    "paper": {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False,
              "thresholding": False, "steps_offset": 0},
    "model": {},
}


def check_resolution(resolution: int | None, native: int, multiple: int) -> int:
    """The side images are measured at: the native one, or a user's choice the denoiser can take."""
    if resolution is None:
        return native
    if resolution < multiple or resolution % multiple:
        raise ValueError(
            f"resolution {resolution} does not fit this model: it must be a positive multiple of {multiple} "
            f"(the model's native side is {native})"
        )
    return int(resolution)


class PixelAdapter:
    family = "pixel"

    def __init__(self, unet, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = "",
                 resolution: int | None = None):
        from diffusers import DDIMScheduler

        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type {prediction_type!r} is not supported; expected one of "
                f"{PREDICTION_TYPES}"
            )
        self.prediction_type = prediction_type
        # The noise schedule comes from the model's own scheduler config (betas, schedule kind, length):
        # diffusers derives alphas_cumprod from it exactly as the model was trained.
        self._ddim = DDIMScheduler.from_config(self.scheduler_config)
        self.alphas_cumprod = self._ddim.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(self._ddim.config.num_train_timesteps)
        self.channels = int(self.unet.config.in_channels)
        self._setup_images()
        self.native_resolution = self.image_size
        self.image_size = check_resolution(resolution, self.native_resolution, self._size_multiple())
        self.source = source

    def _size_multiple(self) -> int:
        """Image sides must be multiples of this: the UNet halves the size once per down block but the last."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def _setup_images(self) -> None:
        """What images look like to this model: mode and side length."""
        if self.channels not in (1, 3):
            raise ValueError(
                f"the UNet takes {self.channels} input channels; pixel models must take 1 (grayscale) or 3 (RGB)"
            )
        self.image_mode = "L" if self.channels == 1 else "RGB"
        size = self.unet.config.sample_size
        self.image_size = int(size if isinstance(size, int) else size[0])

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images.to(self.device, torch.float32)  # pixels are their own x0: nothing to draw

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1, 1)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def _abar(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.alphas_cumprod[t.to(self.device)].reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return add_noise(x0, eps, self._abar(t, x0.ndim))

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            raise ValueError(f"{self.family} models are unconditional; got a prompt conditioning")
        out = self.unet(x_t, t.to(self.device)).sample
        # Models with a learned variance output [prediction, variance] stacked on channels.
        return out[:, : self.channels]

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self._model_output(x_t, t, cond)
        return x0_from_prediction(out, x_t, self._abar(t, x_t.ndim), self.prediction_type)

    def _guided_output(self, x: torch.Tensor, t: torch.Tensor, cond, guidance: float) -> torch.Tensor:
        if cond is None or guidance == 1.0:
            return self._model_output(x, t, cond)
        # Classifier-free guidance against the empty prompt, in one batched call.
        uncond = self.uncond_embeddings(len(x))
        out = self._model_output(torch.cat([x, x]), torch.cat([t, t]), cond_cat([uncond, cond]))
        u, c = out.chunk(2)
        return u + guidance * (c - u)

    def sampler(self, steps: int, schedule: str = "model"):
        """The DDIM scheduler of a `steps`-step check on the `schedule` grid (see DDIM_GRIDS)."""
        from diffusers import DDIMScheduler

        if schedule not in DDIM_GRIDS:
            raise ValueError(f"unknown check schedule {schedule!r}; expected one of {tuple(DDIM_GRIDS)}")
        scheduler = DDIMScheduler.from_config(self.scheduler_config, **DDIM_GRIDS[schedule])
        scheduler.set_timesteps(steps)
        return scheduler

    def check_timesteps(self, steps: int, schedule: str = "model") -> list[int]:
        return [int(t) for t in self.sampler(steps, schedule).timesteps]

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond: torch.Tensor | None = None,
                 guidance: float = 1.0, generator: torch.Generator | list[torch.Generator] | None = None,
                 schedule: str = "model") -> torch.Tensor:
        """DDIM from `noise`; eta > 0 adds the stochastic term (eta = 1: DDPM's posterior variance).

        With eta > 0, `generator` may be a list of one generator per sample, so that each sample's noise
        does not depend on which other samples share the batch.
        """
        scheduler = self.sampler(steps, schedule)
        x = noise.to(self.device, torch.float32)
        for t in scheduler.timesteps:
            out = self._guided_output(x, t.expand(len(x)), cond, guidance)
            x = scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
        return self.decode(x)

    def describe(self) -> dict:
        return {
            "family": self.family,
            "source": self.source,
            "unet_class": type(self.unet).__name__,
            "resolution": self.image_size,
            "native_resolution": self.native_resolution,
            "channels": self.channels,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "scheduler_class": self.scheduler_config.get("_class_name"),
        }
