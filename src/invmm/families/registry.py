"""The model families, in the order they are tried, and what reads them: detection and loading, the presets, the
LoRA loader and the tiny pipelines the tests run over. A new family is its module (base.Family) added here."""

from __future__ import annotations

from pathlib import Path

from invmm.errors import InvMMInputError
from invmm.families import ddpm, dit, flux, ldm, pixart, sd, sd3, sdxl
from invmm.families.base import Family, ModelAdapter
from invmm.families.loading import read_folder, resolve_device, resolve_model_path
from invmm.families.lora import LoraSpec, apply_loras

# Detection order: the first whose `detect` accepts the folder.
FAMILIES: tuple[Family, ...] = tuple(m.FAMILY for m in (ddpm, ldm, sd, sdxl, sd3, flux, pixart, dit))
BY_NAME = {f.name: f for f in FAMILIES}
# preset name -> the InvMMConfig values it sets, as the families contribute them
PRESETS: dict[str, dict] = {name: values for f in FAMILIES for name, values in f.presets.items()}


def family(name: str) -> Family:
    return BY_NAME[name]


def detect(folder) -> Family:
    for f in FAMILIES:
        if f.detect(folder):
            return f
    what = "no denoiser (unet/config.json or transformer/config.json is missing" if not (folder.unet or
                                                                                         folder.transformer) \
        else f"an unsupported denoiser ({(folder.transformer or folder.unet).get('_class_name')!r}"
    raise InvMMInputError(f"model {folder.root}: {what}; found: {folder.listing}). Supported: "
                          + "; ".join(f"{f.name}: {f.folder}" for f in FAMILIES))


def load_adapter(model: str, *, device: str = "auto", hub: bool = False, allow_pickle: bool = False,
                 resolution: int | None = None, latent_scale: float | None = None, loras=None) -> ModelAdapter:
    """Detect the model family from the folder's components and build its adapter.

    `device`: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N.
    `resolution`: the image side to measure at (default: the model's native side; SD3 and Flux at most 512, as
    the authors measure SD3). `latent_scale`: the VAE latent factor, overriding the one from the VAE's saved
    config. `loras`: LoraSpecs (or their dicts) loaded onto the model (families/lora.py); `adapter.loras` records
    each file, its sha256 and scale. (Inference-time mitigations go on above this layer:
    invmm.mitigations.load_mitigated.)
    """
    device = resolve_device(device)
    folder = read_folder(resolve_model_path(model, hub=hub, allow_pickle=allow_pickle))
    fam = detect(folder)
    adapter = fam.load(folder, device=device, allow_pickle=allow_pickle, source=str(model), resolution=resolution,
                       latent_scale=latent_scale)
    specs = [s if isinstance(s, LoraSpec) else LoraSpec(**s) for s in loras or []]
    if specs and fam.lora is None:
        raise InvMMInputError(f"--lora: loading LoRAs into a {fam.name} model is not supported (diffusers has no LoRA "
                              f"format for it; supported: {', '.join(f.name for f in FAMILIES if f.lora)}); audit "
                              "the model with the LoRA merged into its weights")
    components = lora_components(adapter)
    adapter.loras = tuple(apply_loras(fam, components, specs, allow_pickle=allow_pickle))
    for comp in components.values():
        if comp is not None:
            comp.requires_grad_(False)  # LoRA layers arrive trainable; the audited model is frozen
    return adapter


def lora_components(adapter: ModelAdapter) -> dict:
    """The modules a LoRA file may address, by the names diffusers' LoRA files give them."""
    encoders = [*adapter.text_encoders, None, None]
    return {"denoiser": adapter.denoiser, "text_encoder": encoders[0], "text_encoder_2": encoders[1]}


def load_options(adapter: ModelAdapter) -> dict:
    """The loading arguments that rebuild `adapter` as it was loaded (for workers in other processes; its
    mitigations, where it has any, are for invmm.mitigations.load_mitigated)."""
    codec = adapter.codec
    scale_from_user = codec.scale_source == "user"
    return {"resolution": adapter.image_size, "latent_scale": codec.scaling_factor if scale_from_user else None,
            "loras": [{"path": r["path"], "scale": r["scale"]} for r in adapter.loras],
            "mitigations": [dict(m) for m in getattr(adapter, "mitigations", ())]}


def tiny_variants() -> dict[str, tuple]:
    """Every family's tiny pipelines for the tests: variant name -> (its family, the builder's arguments)."""
    return {name: (f, kwargs) for f in FAMILIES for name, kwargs in f.tiny_variants.items()}


def build_tiny(variant: str, path: Path, **extra) -> Path:
    """The tiny pipeline `variant` (tiny_variants) built at `path`; `extra` overrides its builder's arguments."""
    f, kwargs = tiny_variants()[variant]
    return f.tiny(path, **{**kwargs, **extra})
