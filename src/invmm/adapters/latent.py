"""Unconditional latent diffusion: a VAE (`AutoencoderKL` or `VQModel`) plus a `UNet2DModel` on its latents.

Same forward process and DDIM sampler as pixel models (see pixel.py), in latent space: x0 is the VAE's
posterior mode (KL autoencoder) or pre-quantisation latent (VQ autoencoder) times the VAE's
`scaling_factor`, as diffusers' LDM pipelines scale it; generated latents are decoded to images for the
success check.
"""

from __future__ import annotations

import torch

from invmm.adapters.pixel import PixelAdapter


class LatentAdapter(PixelAdapter):
    family = "latent"

    def __init__(self, unet, vae, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = ""):
        self.vae = vae.to(device).eval().requires_grad_(False) if vae is not None else None
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0) if vae is not None else 1.0
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0) if vae is not None else 0.0
        super().__init__(unet, scheduler_config, device=device, source=source)

    def _setup_images(self) -> None:
        vae_channels = int(self.vae.config.in_channels)
        if vae_channels not in (1, 3):
            raise ValueError(f"the VAE takes {vae_channels}-channel images; expected 1 or 3")
        if int(self.vae.config.latent_channels) != self.channels:
            raise ValueError(
                f"the VAE makes {self.vae.config.latent_channels}-channel latents but the UNet takes {self.channels}"
            )
        self.image_mode = "L" if vae_channels == 1 else "RGB"
        size = self.unet.config.sample_size
        latent = int(size if isinstance(size, int) else size[0])
        self.image_size = latent * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.vae.encode(images.to(self.device, torch.float32))
        latents = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x0 / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)

    def describe(self) -> dict:
        d = super().describe()
        d.update(vae_class=type(self.vae).__name__, scaling_factor=self.scaling_factor, latent_channels=self.channels)
        return d
