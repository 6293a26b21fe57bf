"""Pixel-space DDPM/DDIM: a diffusers `UNet2DModel` plus a scheduler config (the paper's `ddpm` setting).

The numerical path is noise_schedule.py's, in pixel space. LoRAs are peft adapter folders (diffusers has no LoRA
loader for a `UNet2DModel`), as for latent diffusion.
"""

from __future__ import annotations

from invmm.families.base import Family, ModelFolder
from invmm.families.loading import build, load_component, no_vae_no_scale
from invmm.families.lora import PEFT_UNET
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.zoo.tiny import build_tiny_pixel

# The paper's DDPM setting is InvMMConfig's defaults.
PRESET: dict = {}


class DDPMAdapter(NoiseScheduleAdapter):
    family = "ddpm"


def detect(folder: ModelFolder) -> bool:
    return (folder.unet or {}).get("_class_name") == "UNet2DModel" and not folder.unet.get("num_class_embeds") \
        and not any(folder.has_config(n) for n in ("vae", "vqvae"))


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers

    no_vae_no_scale(folder, latent_scale)
    unet = load_component(diffusers.UNet2DModel, folder.root / "unet", allow_pickle, folder.root)
    return build(DDPMAdapter, folder.root, unet, folder.scheduler_config, device=device, source=source,
                 resolution=resolution)


FAMILY = Family(
    name="ddpm", folder="`unet` (UNet2DModel) + `scheduler`", detect=detect, load=load,
    presets={"ddpm": PRESET}, sampler="ddim", lora=PEFT_UNET, tiny=build_tiny_pixel,
    tiny_variants={"ddpm": {}, "ddpm-rgb-v": {"channels": 3, "prediction_type": "v_prediction"}},
)
