"""Unconditional latent diffusion: a VAE (`AutoencoderKL` or `VQModel`) plus a `UNet2DModel` on its latents.

Same forward process and DDIM sampler as pixel models (see pixel.py), in latent space: x0 is the VAE's
posterior (KL autoencoder; one draw from the image's stream, or the mode) or pre-quantisation latent (VQ
autoencoder) times the latent scale
(see `resolve_latent_scale`); generated latents are decoded to images for the success check.
"""

from __future__ import annotations

import torch

from invmm.adapters.pixel import PixelAdapter


def resolve_latent_scale(vae, saved_config: dict | None, user: float | None = None) -> tuple[float, str]:
    """The factor between the VAE's latents and the denoiser's, and where it came from.

    diffusers' `VQModel` fills in scaling_factor = 0.18215 when the saved config has no such key, but the
    original LDM code (and the InvMM authors') use VQ latents unscaled, and the paper's CompVis LDM
    checkpoints save no key: so a VQ model's scale is taken from its saved config only, else 1.0.
    `saved_config` is the VAE's config.json as read from disk; None: ask the loaded config what was stated.
    A KL autoencoder's scale is diffusers' (saved or its class default), as its pipelines use it.
    Returns (scale, "user" | "config" | "default").
    """
    if user is not None:
        if not user > 0:
            raise ValueError(f"latent scale must be > 0, got {user}")
        return float(user), "user"
    if saved_config is not None:
        stated = saved_config.get("scaling_factor") is not None
    else:  # diffusers lists the init arguments that were not stated (in the file or in code)
        stated = "scaling_factor" not in (vae.config.get("_use_default_values") or [])
    if stated:
        return float(vae.config.scaling_factor if saved_config is None else saved_config["scaling_factor"]), "config"
    if type(vae).__name__ == "VQModel":
        return 1.0, "default"
    return float(getattr(vae.config, "scaling_factor", None) or 1.0), "default"


class LatentAdapter(PixelAdapter):
    family = "latent"

    def __init__(self, unet, vae, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = "",
                 resolution: int | None = None, vae_saved_config: dict | None = None,
                 latent_scale: float | None = None):
        self.vae = vae.to(device).eval().requires_grad_(False) if vae is not None else None
        self.scaling_factor, self.scale_source = (
            resolve_latent_scale(vae, vae_saved_config, latent_scale) if vae is not None else (1.0, "none")
        )
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0) if vae is not None else 0.0
        super().__init__(unet, scheduler_config, device=device, source=source, resolution=resolution)

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

    def _size_multiple(self) -> int:
        return super()._size_multiple() * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images -> model latents. A KL autoencoder's posterior is sampled with `generator` (the authors' LDM,
        SD 1.x and SD3 code all take one posterior draw), or its mode without one; VQ latents are fixed."""
        enc = self.vae.encode(images.to(self.device, torch.float32))
        if hasattr(enc, "latent_dist"):
            dist = enc.latent_dist
            latents = dist.mode() if generator is None else dist.sample(generator)
        else:
            latents = enc.latents
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x0 / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)

    def describe(self) -> dict:
        d = super().describe()
        d.update(vae_class=type(self.vae).__name__, scaling_factor=self.scaling_factor,
                 scaling_factor_source=self.scale_source, latent_channels=self.channels,
                 vae_encoding="posterior sample" if type(self.vae).__name__ == "AutoencoderKL" else "latents")
        return d
