"""The one contract every model family's adapter meets (pixel.py, latent.py, text2image.py, flow.py).

x0 lives in "model space": pixels in [-1, 1] for pixel models, scaled VAE latents for latent ones. Images
going in and out are float tensors [K, C, H, W] in [-1, 1]. `t` is what `sample_timesteps` draws: a
training timestep (DDPM family) or a training-sigma index (flow matching). tests/test_adapter_contract.py
runs this contract over a tiny pipeline of every family; a new family joins that list.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# What a scorer may need beyond the contract (`Scorer.requires`):
NOISE_SCHEDULE = "noise_schedule"  # a DDPM alpha_bar schedule: alpha_bar(t), eps_prediction
TEXT = "text"  # text conditioning: prompt_embeddings, uncond_embeddings, soft prompts
CLASS = "class"  # class labels: prompt_embeddings(labels), uncond_embeddings, soft_class_conditioning
CAPABILITIES = (NOISE_SCHEDULE, TEXT, CLASS)


@runtime_checkable
class ModelAdapter(Protocol):
    """One diffusion model, frozen, seen through the few operations InvMM and the baselines need."""

    family: str  # "pixel", "latent", "text2image", "flow", "sdxl", "flux", "pixart", "class"
    capabilities: frozenset[str]  # a subset of CAPABILITIES
    conditional: bool  # takes a conditioning: a text (capability TEXT) or a class label (CLASS)
    image_mode: str  # "L" or "RGB": what images are converted to before encoding
    image_size: int  # images are resized/center-cropped to this square side
    native_resolution: int  # the side the model was built for
    device: torch.device
    vae_posterior: str  # "sample" or "mode": what the inversion takes of a KL VAE's posterior (codecs.VAECodec)

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...  # one x0's [C, H, W] at image_size

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, x0: torch.Tensor) -> torch.Tensor: ...

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor: ...

    def guided_output(self, x: torch.Tensor, t, cond=None, guidance: float | list[float] = 1.0) -> torch.Tensor: ...

    def sampler(self, steps: int, schedule: str = "model"): ...  # a diffusers scheduler, timesteps set

    def check_timesteps(self, steps: int, schedule: str = "model") -> list: ...

    # guidance: one classifier-free guidance scale, or one per row of `noise` (the success check batches
    # images that are at different scales); rows at scale 1 take no unconditional pass.
    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond=None,
                 guidance: float | list[float] = 1.0, generator=None, schedule: str = "model") -> torch.Tensor: ...

    def describe(self) -> dict: ...


class NoiseScheduleAdapter(ModelAdapter, Protocol):
    """The DDPM family (capability "noise_schedule")."""

    num_train_timesteps: int

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor: ...

    def eps_prediction(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor: ...
