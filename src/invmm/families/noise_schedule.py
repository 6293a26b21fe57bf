"""The numerical path every DDPM-type family shares (ddpm, ldm, sd, sdxl, pixart, dit): a denoiser trained on a
DDPM alpha_bar schedule, in pixel space or through a VAE codec.

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the denoiser's raw output turned into x0_hat by the scheduler's
`prediction_type`, deterministic DDIM for generation, classifier-free guidance for the conditional families
(which supply `_model_output`'s conditioning and `uncond_embeddings`).
"""

from __future__ import annotations

import copy

import torch

from invmm.families.base import NOISE_SCHEDULE, ModelAdapter
from invmm.families.codecs import CodecImages, PixelCodec, check_resolution
from invmm.families.conditions import classifier_free_guidance, guidance_pair
from invmm.functional import PREDICTION_TYPES, add_noise, x0_from_prediction

# The success check's DDIM grid in the InvMM authors' code: timesteps spaced from the end (999, 994, ..., 4
# for 200 steps), the last step landing on alpha_bar = 1, and no clipping of x0 between steps. "model" keeps
# whatever the model's scheduler config says (often a leading grid, and clip_sample=True for pixel DDPMs).
DDIM_GRIDS = {
    "paper": {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False,
              "thresholding": False, "steps_offset": 0},
    "model": {},
}


class NoiseScheduleAdapter(CodecImages, ModelAdapter):
    """The DDPM-type numerical path for a denoiser (`UNet2DModel` and the conditional ones), in pixel space or
    through a VAE codec."""

    capabilities = frozenset({NOISE_SCHEDULE})

    def __init__(self, denoiser, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = "",
                 resolution: int | None = None, codec=None):
        from diffusers import DDIMScheduler

        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device).eval().requires_grad_(False)
        self.channels = int(self.denoiser.config.in_channels)
        self.codec = codec or PixelCodec(self.channels, self.device)
        if self.codec.channels != self.channels:
            raise ValueError(f"the {self.codec.kind} codec makes {self.codec.channels}-channel inputs but the "
                             f"denoiser takes {self.channels}")
        self.vae = self.codec.vae
        self.image_mode = self.codec.image_mode
        # A saved DDPM/DDIM config always states clip_sample; one that does not (DPM-Solver, Euler) comes from a
        # sampler that never clips x0, and DDIM's default (True) would clip latents on the model's own grid.
        self.scheduler_config = {"clip_sample": False, **scheduler_config}
        prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type {prediction_type!r} is not supported; expected one of "
                f"{PREDICTION_TYPES}"
            )
        self.prediction_type = prediction_type
        # The noise schedule comes from the model's own scheduler config (betas, schedule kind, length):
        # diffusers derives alphas_cumprod from it exactly as the model was trained.
        ddim = DDIMScheduler.from_config(self.scheduler_config)
        self.alphas_cumprod = ddim.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(ddim.config.num_train_timesteps)
        # The check's schedulers, built once here (see sampler).
        self._samplers = {name: DDIMScheduler.from_config(self.scheduler_config, **grid)
                          for name, grid in DDIM_GRIDS.items()}
        size = self.denoiser.config.sample_size
        self.native_resolution = int(size if isinstance(size, int) else size[0]) * self.codec.factor
        self.image_size = check_resolution(resolution, self.native_resolution, self.codec.factor * self._side_step())
        self.source = source

    def _side_step(self) -> int:
        # The UNet halves the side once per down block but the last.
        return 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=generator.device)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t (any shape)."""
        return self.alphas_cumprod[torch.as_tensor(t, device=self.device)]

    def _abar(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.alpha_bar(t).reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return add_noise(x0, eps, self._abar(t, x0.ndim))

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            raise ValueError(f"{self.family} models are unconditional; got a prompt conditioning")
        out = self.denoiser(x_t, t.to(self.device)).sample
        # Models with a learned variance output [prediction, variance] stacked on channels.
        return out[:, : self.channels]

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self._model_output(x_t, t, cond)
        return x0_from_prediction(out, x_t, self._abar(t, x_t.ndim), self.prediction_type)

    def eps_prediction(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """The model's noise estimate, whatever it predicts: eps = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)."""
        abar = self._abar(t, x_t.ndim)
        return (x_t - abar.sqrt() * self.predict_x0(x_t, t, cond)) / (1 - abar).sqrt()

    def guided_output(self, x: torch.Tensor, t: torch.Tensor, cond=None,
                      guidance: float | list[float] = 1.0) -> torch.Tensor:
        """The raw model output a sampler steps with; conditional models (the subclasses) guide it against the
        unconditional rows of `unconditional_rows`."""
        if not self.conditional:
            return self._model_output(x, t, cond)
        uncond = None if cond is None else self.unconditional_rows(cond, len(x))
        return classifier_free_guidance(self._model_output, x, t, cond, uncond, guidance)

    def guidance_pair(self, x: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        return guidance_pair(self._model_output, x, t, cond, self.unconditional_rows(cond, len(x)))

    def sampler(self, steps: int, schedule: str = "model"):
        """The DDIM scheduler of a `steps`-step check on the `schedule` grid (see DDIM_GRIDS): a fresh copy of the
        one built at load time. diffusers' schedulers create their tables (betas, alpha_bar) on the default
        device when constructed; built at load, they hold them as the model was loaded, whatever default device
        is in force while a run goes on (tests/test_device_placement.py), and no check constructs one."""
        if schedule not in DDIM_GRIDS:
            raise ValueError(f"unknown check schedule {schedule!r}; expected one of {tuple(DDIM_GRIDS)}")
        scheduler = copy.deepcopy(self._samplers[schedule])
        scheduler.set_timesteps(steps)
        return scheduler

    def check_timesteps(self, steps: int, schedule: str = "model") -> list[int]:
        return [int(t) for t in self.sampler(steps, schedule).timesteps]

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond: torch.Tensor | None = None,
                 guidance: float | list[float] = 1.0, generator: torch.Generator | list[torch.Generator] | None = None,
                 schedule: str = "model") -> torch.Tensor:
        """DDIM from `noise`; eta > 0 adds the stochastic term (eta = 1: DDPM's posterior variance).

        With eta > 0, `generator` may be a list of one generator per sample, so that each sample's noise
        does not depend on which other samples share the batch.
        """
        scheduler = self.sampler(steps, schedule)
        x = noise.to(self.device, torch.float32)
        for t in scheduler.timesteps:
            out = self.guided_output(x, t.expand(len(x)), cond, guidance)
            x = scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
        return self.decode(x)

    def describe(self) -> dict:
        return {
            "family": self.family,
            "source": self.source,
            "denoiser_class": type(self.denoiser).__name__,
            "resolution": self.image_size,
            "native_resolution": self.native_resolution,
            "channels": self.channels,
            **self.codec.describe(),
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.num_train_timesteps,
            "scheduler_class": self.scheduler_config.get("_class_name"),
            **({"loras": list(self.loras)} if self.loras else {}),
        }
