"""What the inverter needs from a diffusion model, whatever its family."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ModelAdapter(Protocol):
    """One diffusion model, frozen, seen through the few operations InvMM needs.

    x0 lives in "model space": pixels in [-1, 1] for pixel models, scaled VAE latents for latent ones.
    Images going in and out are float tensors [K, C, H, W] in [-1, 1].
    """

    family: str
    image_mode: str  # "L" or "RGB": what images are converted to before encoding
    image_size: int  # images are resized/center-cropped to this square size
    device: torch.device

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, x0: torch.Tensor) -> torch.Tensor: ...

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0) -> torch.Tensor: ...

    def describe(self) -> dict: ...
