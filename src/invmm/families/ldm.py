"""Unconditional latent diffusion: a VAE (`AutoencoderKL` or `VQModel`) plus a `UNet2DModel` on its latents.

The forward process, x0 conversion and DDIM check of noise_schedule.py, in the VAE's latent space
(codecs.VAECodec: x0 = (latents - shift) * scale); generated latents are decoded to images for the success check.
LoRAs are peft adapter folders, as for pixel DDPMs.
"""

from __future__ import annotations

import torch

from invmm.families.base import Family, ModelFolder
from invmm.families.codecs import VAECodec
from invmm.families.loading import build, load_component, load_vae
from invmm.families.lora import PEFT_UNET
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.zoo.tiny import build_tiny_ldm

# The paper's LDM setting: checks every 10 steps, lambda growing 5x faster, B = 16, DDIM 50.
PRESET = {"check_every": 10, "delta": 5e-4, "batch_size": 16, "sampler_steps": 50, "sscd_resize": 256}


class LDMAdapter(NoiseScheduleAdapter):
    family = "ldm"
    # One posterior draw, as the authors' LDM code (its get_first_stage_encoding) takes it; the paper's LDM is a VQ
    # model, whose latents involve no draw.
    vae_posterior = "sample"

    def __init__(self, unet, vae, scheduler_config: dict, *, device: str | torch.device = "cpu", source: str = "",
                 resolution: int | None = None, vae_saved_config: dict | None = None,
                 latent_scale: float | None = None):
        codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                         posterior=self.vae_posterior)
        super().__init__(unet, scheduler_config, device=device, source=source, resolution=resolution, codec=codec)


def detect(folder: ModelFolder) -> bool:
    return (folder.unet or {}).get("_class_name") == "UNet2DModel" and not folder.unet.get("num_class_embeds") \
        and any(folder.has_config(n) for n in ("vae", "vqvae"))


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers

    unet = load_component(diffusers.UNet2DModel, folder.root / "unet", allow_pickle, folder.root)
    vae, saved = load_vae(folder, allow_pickle, names=("vae", "vqvae"))
    return build(LDMAdapter, folder.root, unet, vae, folder.scheduler_config, device=device, source=source,
                 resolution=resolution, vae_saved_config=saved, latent_scale=latent_scale)


FAMILY = Family(
    name="ldm", folder="`unet` (UNet2DModel) + `vae` (AutoencoderKL) or `vqvae` (VQModel)", detect=detect,
    load=load, presets={"ldm": PRESET}, sampler="ddim", lora=PEFT_UNET, tiny=build_tiny_ldm,
    tiny_variants={"ldm-kl": {"vae_kind": "kl"}, "ldm-vq": {"vae_kind": "vq"}},
)
