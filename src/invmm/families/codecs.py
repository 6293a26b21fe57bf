"""Images <-> model space, the part every family composes instead of inheriting: pixels are their own x0;
a VAE's latents are scaled (and for SD3 shifted) as the model was trained on them.

A codec knows the image mode it takes, how much it shrinks an image side, and its channels in model space.
"""

from __future__ import annotations

import torch


class PixelCodec:
    """Pixel-space models: x0 is the image in [-1, 1]."""

    kind = "pixels"
    factor = 1
    vae = None
    scaling_factor, scale_source = 1.0, None  # nothing to scale

    def __init__(self, channels: int, device: torch.device):
        if channels not in (1, 3):
            raise ValueError(f"the denoiser takes {channels} input channels; pixel models must take 1 (grayscale) "
                             "or 3 (RGB)")
        self.channels = channels
        self.image_mode = "L" if channels == 1 else "RGB"
        self.device = device

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images.to(self.device, torch.float32)  # nothing to draw

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1, 1)

    def describe(self) -> dict:
        return {"codec": self.kind}


def resolve_latent_scale(vae, saved_config: dict | None, user: float | None = None) -> tuple[float, str]:
    """The factor between the VAE's latents and the denoiser's, and where it came from.

    diffusers' `VQModel` fills in scaling_factor = 0.18215 when the saved config has no such key, but the
    original LDM code (and the InvMM authors') use VQ latents unscaled, and the paper's CompVis LDM
    checkpoints save no key: so a VQ model's scale is taken from its saved config only, else 1.0.
    A KL autoencoder's scale is diffusers' (saved or its class default), as its pipelines use it.
    `saved_config` is the VAE's config.json as read from disk; None: ask the loaded config what was stated.
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


# How a KL autoencoder's posterior becomes the image's latents, per family (the adapters' `vae_posterior`).
POSTERIORS = ("sample", "mode")


class VAECodec:
    """A VAE (`AutoencoderKL` or `VQModel`): x0 = (latents - shift) * scale.

    A KL autoencoder's posterior gives its `posterior`: "sample", one draw from the caller's generator (the
    authors' LDM and SD3 code), or "mode" (their SD 1.x/2.x scripts override get_first_stage_encoding to take
    it). Without a generator (the baseline scorers) it is the mode. VQ latents are the pre-quantisation ones.
    """

    kind = "vae"

    def __init__(self, vae, device: torch.device, *, saved_config: dict | None = None,
                 latent_scale: float | None = None, posterior: str = "sample"):
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        self.posterior = posterior
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = device
        self.scaling_factor, self.scale_source = resolve_latent_scale(vae, saved_config, latent_scale)
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
        image_channels = int(vae.config.in_channels)
        if image_channels not in (1, 3):
            raise ValueError(f"the VAE takes {image_channels}-channel images; expected 1 or 3")
        self.image_mode = "L" if image_channels == 1 else "RGB"
        self.channels = int(vae.config.latent_channels)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        enc = self.vae.encode(images.to(self.device, torch.float32))
        if hasattr(enc, "latent_dist"):
            dist = enc.latent_dist
            latents = dist.sample(generator) if self.posterior == "sample" and generator is not None else dist.mode()
        else:
            latents = enc.latents
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x0 / self.scaling_factor + self.shift_factor).sample.clamp(-1, 1)

    def describe(self) -> dict:
        return {"codec": self.kind, "vae_class": type(self.vae).__name__, "scaling_factor": self.scaling_factor,
                "scaling_factor_source": self.scale_source, "shift_factor": self.shift_factor,
                "vae_encoding": f"posterior {self.posterior}" if type(self.vae).__name__ == "AutoencoderKL"
                else "latents"}


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


class CodecImages:
    """The contract's images <-> model-space members, for an adapter holding `codec`, `channels` and
    `image_size`."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.codec.factor
        return (self.channels, side, side)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.codec.encode(images, generator)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(x0)
