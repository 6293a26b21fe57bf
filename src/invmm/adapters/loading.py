"""Model folder (or an explicitly requested hub id) -> adapter, without executing anything the model ships.

Components are built from their known diffusers classes only; custom pipelines and remote code are
never imported. Weights load from safetensors; pickle checkpoints need an explicit opt-in because
unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

from invmm.errors import InvMMInputError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


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


def load_adapter(model: str, *, device: str = "cpu", hub: bool = False, allow_pickle: bool = False):
    """Detect the model family from the folder and build its adapter."""
    root = resolve_model_path(model, hub=hub, allow_pickle=allow_pickle)
    found = sorted(p.name for p in root.iterdir())
    scheduler_cfg_path = root / "scheduler" / "scheduler_config.json"
    if not scheduler_cfg_path.exists():
        raise InvMMInputError(
            f"model {root}: no scheduler (scheduler/scheduler_config.json is missing; found: {', '.join(found)}). "
            "invmm needs the noise schedule the model was trained with; save the pipeline with "
            "save_pretrained so the scheduler config is included."
        )
    scheduler_config = _read_json(scheduler_cfg_path, f"model {root}")
    unet_dir = root / "unet"
    unet_config = _read_json(unet_dir / "config.json", f"model {root}")
    cls_name = unet_config.get("_class_name")
    if cls_name != "UNet2DModel":
        raise InvMMInputError(
            f"model {root}: unet/config.json declares {cls_name!r}; this version of invmm measures "
            f"unconditional pixel-space models (UNet2DModel). Found components: {', '.join(found)}"
        )
    if (root / "vae").exists() or (root / "vqvae").exists():
        raise InvMMInputError(f"model {root}: latent diffusion (has a VAE) is not supported yet")
    use_safetensors = _check_weights(unet_dir, allow_pickle)

    from diffusers import UNet2DModel

    from invmm.adapters.pixel import PixelAdapter

    try:
        unet = UNet2DModel.from_pretrained(
            unet_dir, local_files_only=True, use_safetensors=use_safetensors, low_cpu_mem_usage=False
        )
    except Exception as exc:  # diffusers raises many types for a broken folder
        raise InvMMInputError(f"model {root}: the UNet could not be loaded: {exc}") from exc
    return PixelAdapter(unet, scheduler_config, device=device, source=str(model))
