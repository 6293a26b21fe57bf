"""Unconditional latent diffusion: a VAE (`AutoencoderKL` or `VQModel`) plus a `UNet2DModel` on its latents.

The forward process, x0 conversion and DDIM check of pixel.py, in the VAE's latent space (codecs.VAECodec:
x0 = (latents - shift) * scale, a KL posterior drawn from the image's stream); generated latents are
decoded to images for the success check.
"""

from __future__ import annotations

import torch

from invmm.adapters.codecs import VAECodec
from invmm.adapters.pixel import PixelAdapter


class LatentAdapter(PixelAdapter):
    family = "latent"

    def __init__(self, unet, vae, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = "",
                 resolution: int | None = None, vae_saved_config: dict | None = None,
                 latent_scale: float | None = None):
        codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                         posterior=self.vae_posterior)
        super().__init__(unet, scheduler_config, device=device, source=source, resolution=resolution, codec=codec)
