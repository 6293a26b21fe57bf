"""Model folder (or an explicitly requested hub id) -> adapter, without executing anything the model ships.

Components are built from their known diffusers classes only; custom pipelines and remote code are
never imported. Weights load from safetensors; pickle checkpoints need an explicit opt-in because
unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

from invmm.adapters.classcond import ClassConditionalAdapter
from invmm.adapters.flow import FlowAdapter
from invmm.adapters.flux import FluxAdapter
from invmm.adapters.latent import LatentAdapter
from invmm.adapters.lora import PICKLE_SUFFIXES, LoraSpec, apply_loras
from invmm.adapters.pixart import PixArtAdapter
from invmm.adapters.pixel import PixelAdapter
from invmm.adapters.sdxl import SDXLAdapter
from invmm.adapters.text2image import Text2ImageAdapter
from invmm.errors import InvMMInputError


def resolve_model_path(model: str, *, hub: bool = False, allow_pickle: bool = False) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InvMMInputError(f"model {model}: is a file; pass a diffusers model folder (with model_index.json)")
    if not hub:
        raise InvMMInputError(
            f"model {model}: no such folder. Pass a local diffusers model folder, or pass --hub to download "
            "this name from the Hugging Face Hub (the only time invmm uses the network)."
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    if allow_pickle:
        patterns += [f"*{s}" for s in PICKLE_SUFFIXES]
    return Path(snapshot_download(model, allow_patterns=patterns))


def _check_weights(component: Path, allow_pickle: bool) -> bool:
    """Return whether the component has safetensors weights; refuse pickle-only folders unless allowed."""
    safe = list(component.glob("*.safetensors"))
    if safe:
        return True
    pickles = [p.name for p in component.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not pickles:
        raise InvMMInputError(f"model component {component}: no weights found (expected *.safetensors)")
    if not allow_pickle:
        raise InvMMInputError(
            f"model component {component}: weights are pickle files ({', '.join(sorted(pickles))}), which can "
            "execute code when loaded. Convert them to safetensors, or pass --allow-pickle if you trust "
            "the source."
        )
    return False


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvMMInputError(f"{what}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvMMInputError(f"{what}: {path} is not valid JSON ({exc})") from None


def _load_component(cls, directory: Path, allow_pickle: bool, root: Path, **extra):
    use_safetensors = _check_weights(directory, allow_pickle)
    if cls.__module__.startswith("transformers"):
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one bar per component drowns the run's own
    if cls.__module__.startswith("diffusers"):
        extra.setdefault("low_cpu_mem_usage", False)  # no accelerate needed for these small loads
    try:
        return cls.from_pretrained(directory, local_files_only=True, use_safetensors=use_safetensors, **extra)
    except Exception as exc:  # diffusers raises many types for a broken folder
        raise InvMMInputError(f"model {root}: {directory.name} could not be loaded: {exc}") from exc


def _require(root: Path, listing: str, what: str, names: tuple[str, ...]) -> None:
    missing = [c for c in names if not (root / c).is_dir()]
    if missing:
        raise InvMMInputError(f"model {root}: {what} needs {', '.join(missing)} (found: {listing})")


def _model_index(root: Path) -> dict:
    """model_index.json (the pipeline's own settings), or {} for a folder without one."""
    path = root / "model_index.json"
    return _read_json(path, f"model {root}") if path.exists() else {}


def _tokenizers(root: Path, classes: dict[str, type]) -> list:
    """Tokenizers by folder name, with a clear error for one that does not load."""
    try:
        return [cls.from_pretrained(root / name, local_files_only=True) for name, cls in classes.items()]
    except Exception as exc:
        raise InvMMInputError(f"model {root}: a tokenizer could not be loaded: {exc}") from exc


VAE_CLASSES = ("AutoencoderKL", "VQModel")


def load_adapter(model: str, *, device: str = "cpu", hub: bool = False, allow_pickle: bool = False,
                 resolution: int | None = None, latent_scale: float | None = None, loras=None):
    """Detect the model family from the folder's components and build its adapter.

    `resolution`: the image side to measure at (default: the model's native side; SD3 at most 512, as the
    authors do). `latent_scale`: the VAE latent factor, overriding the one from the VAE's saved config.
    `loras`: LoraSpecs (or their dicts) loaded onto the model (adapters/lora.py); `adapter.loras` records
    each file, its sha256 and scale.
    """
    adapter = _load_base(model, device=device, hub=hub, allow_pickle=allow_pickle, resolution=resolution,
                         latent_scale=latent_scale)
    specs = [s if isinstance(s, LoraSpec) else LoraSpec(**s) for s in loras or []]
    adapter.loras = apply_loras(adapter.family, lora_components(adapter), specs, allow_pickle=allow_pickle)
    for comp in lora_components(adapter).values():
        if comp is not None:
            comp.requires_grad_(False)  # LoRA layers arrive trainable; the audited model is frozen
    return adapter


def lora_components(adapter) -> dict:
    encoders = list(getattr(adapter, "text_encoders", None) or []) + [None, None]
    return {"denoiser": getattr(adapter, "unet", None) or getattr(adapter, "transformer", None),
            "text_encoder": getattr(adapter, "text_encoder", None) or encoders[0],
            "text_encoder_2": encoders[1]}


def _load_base(model: str, *, device, hub, allow_pickle, resolution, latent_scale):
    import diffusers

    root = resolve_model_path(model, hub=hub, allow_pickle=allow_pickle)
    found = sorted(p.name for p in root.iterdir())
    listing = ", ".join(found) or "nothing"
    scheduler_cfg_path = root / "scheduler" / "scheduler_config.json"
    if not scheduler_cfg_path.exists():
        raise InvMMInputError(
            f"model {root}: no scheduler (scheduler/scheduler_config.json is missing; found: {listing}). "
            "invmm needs the noise schedule the model was trained with; save the pipeline with "
            "save_pretrained so the scheduler config is included."
        )
    scheduler_config = _read_json(scheduler_cfg_path, f"model {root}")
    kwargs = dict(device=device, allow_pickle=allow_pickle, source=str(model), resolution=resolution,
                  latent_scale=latent_scale)
    if (root / "transformer" / "config.json").exists():
        config = _read_json(root / "transformer" / "config.json", f"model {root}")
        cls_name = config.get("_class_name")
        loader = TRANSFORMER_LOADERS.get(cls_name)
        if cls_name == "Transformer2DModel" and config.get("num_embeds_ada_norm"):
            loader = _load_class_conditional  # DiT saved before diffusers had DiTTransformer2DModel
        if loader is None:
            raise InvMMInputError(
                f"model {root}: transformer/config.json declares {cls_name!r}; supported transformers are "
                f"{', '.join(TRANSFORMER_LOADERS)} and a class-conditional Transformer2DModel (DiT). "
                f"Found components: {listing}"
            )
        return loader(root, scheduler_config, listing, **kwargs)
    if not (root / "unet" / "config.json").exists():
        raise InvMMInputError(
            f"model {root}: no denoiser (unet/config.json or transformer/config.json is missing; found: {listing}). "
            "Supported: pixel and latent diffusion (UNet2DModel, also class-conditional), Stable Diffusion 1.x/2.x "
            "and SDXL (UNet2DConditionModel), SD3, Flux, PixArt and DiT (transformer)."
        )
    unet_config = _read_json(root / "unet" / "config.json", f"model {root}")
    cls_name = unet_config.get("_class_name")
    if cls_name == "UNet2DConditionModel":
        # SDXL: a second text encoder, and the UNet adds pooled text and size conditioning to its time embedding.
        if unet_config.get("addition_embed_type") == "text_time":
            return _load_sdxl(root, scheduler_config, listing, **kwargs)
        return _load_text2image(root, scheduler_config, listing, **kwargs)
    if cls_name != "UNet2DModel":
        raise InvMMInputError(
            f"model {root}: unet/config.json declares {cls_name!r}; supported denoisers are UNet2DModel (pixel "
            f"or latent diffusion) and UNet2DConditionModel (Stable Diffusion). Found components: {listing}"
        )
    if unet_config.get("num_class_embeds"):
        return _load_class_conditional(root, scheduler_config, listing, **kwargs)
    unet = _load_component(diffusers.UNet2DModel, root / "unet", allow_pickle, root)
    vae_dir = next((root / n for n in ("vae", "vqvae") if (root / n / "config.json").exists()), None)

    if vae_dir is None:
        if latent_scale is not None:
            raise InvMMInputError(f"model {root}: --latent-scale needs a VAE, and this pixel-space model has none")
        return _build(PixelAdapter, root, unet, scheduler_config, device=device, source=str(model),
                      resolution=resolution)
    vae_saved = _read_json(vae_dir / "config.json", f"model {root}")
    vae_cls = vae_saved.get("_class_name")
    if vae_cls not in VAE_CLASSES:
        raise InvMMInputError(
            f"model {root}: {vae_dir.name}/config.json declares {vae_cls!r}; expected one of {VAE_CLASSES}"
        )
    vae = _load_component(getattr(diffusers, vae_cls), vae_dir, allow_pickle, root)
    return _build(LatentAdapter, root, unet, vae, scheduler_config, device=device, source=str(model),
                  resolution=resolution, vae_saved_config=vae_saved, latent_scale=latent_scale)


def load_options(adapter) -> dict:
    """The load_adapter arguments that rebuild `adapter` as it was loaded (for workers in other processes)."""
    codec = getattr(adapter, "codec", None)
    scale_from_user = getattr(codec, "scale_source", None) == "user"
    return {"resolution": adapter.image_size, "latent_scale": codec.scaling_factor if scale_from_user else None,
            "loras": [{"path": r["path"], "scale": r["scale"]} for r in getattr(adapter, "loras", None) or []]}


def _build(cls, root: Path, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except ValueError as exc:  # the adapters' checks of what the components declare
        raise InvMMInputError(f"model {root}: {exc}") from exc


def _load_text2image(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
                     resolution=None, latent_scale=None):
    import diffusers
    import transformers

    missing = [c for c in ("text_encoder", "tokenizer") if not (root / c).is_dir()]
    if missing:
        raise InvMMInputError(
            f"model {root}: a UNet2DConditionModel needs {', '.join(missing)} beside it (found: {listing})"
        )
    encoder_cfg = _read_json(root / "text_encoder" / "config.json", f"model {root}")
    arch = (encoder_cfg.get("architectures") or ["CLIPTextModel"])[0]
    if arch not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise InvMMInputError(f"model {root}: text encoder {arch!r} is not a CLIP text model")
    unet = _load_component(diffusers.UNet2DConditionModel, root / "unet", allow_pickle, root)
    # No VAE: a pixel-space text-to-image model.
    vae, vae_saved = None, None
    if (root / "vae").is_dir():
        vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
        vae_saved = _read_json(root / "vae" / "config.json", f"model {root}")
    elif latent_scale is not None:
        raise InvMMInputError(f"model {root}: --latent-scale needs a VAE, and this pixel-space model has none")
    text_encoder = _load_component(getattr(transformers, arch), root / "text_encoder", allow_pickle, root)
    (tokenizer,) = _tokenizers(root, {"tokenizer": transformers.CLIPTokenizer})
    return _build(Text2ImageAdapter, root, unet, vae, text_encoder, tokenizer, scheduler_config, device=device,
                  source=source, resolution=resolution, vae_saved_config=vae_saved, latent_scale=latent_scale)


def _load_flow(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
               resolution=None, latent_scale=None):
    import diffusers
    import transformers

    _require(root, listing, "an SD3 model", ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    transformer = _load_component(diffusers.SD3Transformer2DModel, root / "transformer", allow_pickle, root)
    vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
    encoders = [
        _load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder", allow_pickle, root),
        _load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder_2", allow_pickle, root),
        None,
    ]
    tokenizers = _tokenizers(root, {"tokenizer": transformers.CLIPTokenizer, "tokenizer_2": transformers.CLIPTokenizer})
    tokenizers.append(None)
    # T5 is optional: SD3 runs (slightly worse) without it, and it is 4.7B parameters.
    if (root / "text_encoder_3").is_dir():
        encoders[2] = _load_component(transformers.T5EncoderModel, root / "text_encoder_3", allow_pickle, root)
        tokenizers[2] = _tokenizers(root, {"tokenizer_3": transformers.AutoTokenizer})[0]
    return _build(FlowAdapter, root, transformer, vae, encoders, tokenizers, scheduler_config, device=device,
                  source=source, resolution=resolution, latent_scale=latent_scale,
                  vae_saved_config=_read_json(root / "vae" / "config.json", f"model {root}"))


def _load_class_conditional(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
                            resolution=None, latent_scale=None):
    import diffusers

    if not (root / "transformer" / "config.json").exists():
        raise InvMMInputError(
            f"model {root}: a class-conditional UNet2DModel is not supported (no convention names its "
            "unconditional class, which guidance needs); supported class-conditional models are DiT "
            "(transformer/ with DiTTransformer2DModel)"
        )
    cls_name = _read_json(root / "transformer" / "config.json", f"model {root}").get("_class_name")
    transformer = _load_component(getattr(diffusers, cls_name), root / "transformer", allow_pickle, root)
    vae, vae_saved = None, None
    if (root / "vae" / "config.json").exists():
        vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
        vae_saved = _read_json(root / "vae" / "config.json", f"model {root}")
    elif latent_scale is not None:
        raise InvMMInputError(f"model {root}: --latent-scale needs a VAE, and this pixel-space model has none")
    id2label = _model_index(root).get("id2label")
    if id2label is not None and not isinstance(id2label, dict):
        raise InvMMInputError(f"model {root}: model_index.json id2label must map class indices to names")
    return _build(ClassConditionalAdapter, root, transformer, vae, scheduler_config, id2label=id2label, device=device,
                  source=source, resolution=resolution, vae_saved_config=vae_saved, latent_scale=latent_scale)


def _load_flux(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
               resolution=None, latent_scale=None):
    import diffusers
    import transformers

    _require(root, listing, "a Flux model", ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    transformer = _load_component(diffusers.FluxTransformer2DModel, root / "transformer", allow_pickle, root)
    vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
    encoders = [_load_component(transformers.CLIPTextModel, root / "text_encoder", allow_pickle, root),
                _load_component(transformers.T5EncoderModel, root / "text_encoder_2", allow_pickle, root)]
    tokenizers = _tokenizers(root, {"tokenizer": transformers.CLIPTokenizer, "tokenizer_2": transformers.AutoTokenizer})
    return _build(FluxAdapter, root, transformer, vae, encoders, tokenizers, scheduler_config, device=device,
                  source=source, resolution=resolution, latent_scale=latent_scale,
                  vae_saved_config=_read_json(root / "vae" / "config.json", f"model {root}"))


def _load_pixart(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
                 resolution=None, latent_scale=None):
    import diffusers
    import transformers

    _require(root, listing, "a PixArt model", ("vae", "text_encoder", "tokenizer"))
    encoder_cfg = _read_json(root / "text_encoder" / "config.json", f"model {root}")
    arch = (encoder_cfg.get("architectures") or ["T5EncoderModel"])[0]
    if arch != "T5EncoderModel":
        raise InvMMInputError(f"model {root}: text encoder {arch!r} is not a T5 encoder (T5EncoderModel)")
    # Alpha and Sigma differ in their prompt length (120 / 300 T5 tokens); only the pipeline class says which.
    pipeline_class = _model_index(root).get("_class_name")
    transformer = _load_component(diffusers.PixArtTransformer2DModel, root / "transformer", allow_pickle, root)
    vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
    text_encoder = _load_component(transformers.T5EncoderModel, root / "text_encoder", allow_pickle, root)
    (tokenizer,) = _tokenizers(root, {"tokenizer": transformers.AutoTokenizer})
    return _build(PixArtAdapter, root, transformer, vae, text_encoder, tokenizer, scheduler_config, device=device,
                  source=source, resolution=resolution, latent_scale=latent_scale, pipeline_class=pipeline_class,
                  vae_saved_config=_read_json(root / "vae" / "config.json", f"model {root}"))


def _load_sdxl(root: Path, scheduler_config: dict, listing: str, *, device, allow_pickle, source,
               resolution=None, latent_scale=None):
    import diffusers
    import transformers

    missing = [c for c in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
               if not (root / c).is_dir()]
    if missing:
        refiner = "text_encoder" in missing and (root / "text_encoder_2").is_dir()
        raise InvMMInputError(
            f"model {root}: an SDXL model needs {', '.join(missing)} (found: {listing})"
            + ("; an SDXL refiner (text_encoder_2 only, aesthetic-score conditioning) is not supported" if refiner
               else "")
        )
    index = _model_index(root)
    unet = _load_component(diffusers.UNet2DConditionModel, root / "unet", allow_pickle, root)
    vae = _load_component(diffusers.AutoencoderKL, root / "vae", allow_pickle, root)
    encoders = [
        _load_component(transformers.CLIPTextModel, root / "text_encoder", allow_pickle, root),
        _load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder_2", allow_pickle, root),
    ]
    tokenizers = _tokenizers(root, {"tokenizer": transformers.CLIPTokenizer, "tokenizer_2": transformers.CLIPTokenizer})
    # The pipeline's own setting (default True): the unconditional prompt is zeros, not the encoded "".
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", True))
    return _build(SDXLAdapter, root, unet, vae, encoders, tokenizers, scheduler_config, device=device,
                  source=source, resolution=resolution, latent_scale=latent_scale,
                  vae_saved_config=_read_json(root / "vae" / "config.json", f"model {root}"),
                  force_zeros_for_empty_prompt=force_zeros)


TRANSFORMER_LOADERS = {
    "SD3Transformer2DModel": _load_flow,
    "FluxTransformer2DModel": _load_flux,
    "PixArtTransformer2DModel": _load_pixart,
    "DiTTransformer2DModel": _load_class_conditional,
}
