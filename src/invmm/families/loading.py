"""Reading a model folder safely: what every family's loader uses.

Components are built from their known diffusers and transformers classes only; custom pipelines and remote
code are never imported. Weights load from safetensors; pickle checkpoints need an explicit opt-in because
unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

from invmm.errors import InvMMInputError
from invmm.families.base import ModelFolder

AUTO_DEVICE = "auto"


def resolve_device(device: str) -> str:
    """The torch device a run computes on: `auto` is CUDA when torch sees a GPU, else the CPU; any other name
    (cpu, cuda, cuda:1, mps) is checked and kept. A CUDA device torch cannot see is an input error, not a
    crash deep inside the first model call."""
    import torch

    name = str(device).strip().lower()
    if name == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvMMInputError(f"--device {device}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvMMInputError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}); "
                                  "use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvMMInputError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) "
                                  f"(0 to {torch.cuda.device_count() - 1})")
    return name


def device_kind(device) -> str:
    """cpu, cuda, mps, ...: what a resumed run must compute on again (cuda:0 and cuda:1 are one kind)."""
    return str(device).split(":")[0]


# Weight files that unpickle (and so may run code) when loaded: refused unless --allow-pickle.
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


def check_weights(component: Path, allow_pickle: bool) -> bool:
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


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvMMInputError(f"{what}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvMMInputError(f"{what}: {path} is not valid JSON ({exc})") from None


def load_component(cls, directory: Path, allow_pickle: bool, root: Path, **extra):
    use_safetensors = check_weights(directory, allow_pickle)
    if cls.__module__.startswith("transformers"):
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one bar per component drowns the run's own
    if cls.__module__.startswith("diffusers"):
        extra.setdefault("low_cpu_mem_usage", False)  # no accelerate needed for these small loads
    try:
        return cls.from_pretrained(directory, local_files_only=True, use_safetensors=use_safetensors, **extra)
    except Exception as exc:  # diffusers raises many types for a broken folder
        raise InvMMInputError(f"model {root}: {directory.name} could not be loaded: {exc}") from exc


def require(root: Path, listing: str, what: str, names: tuple[str, ...]) -> None:
    missing = [c for c in names if not (root / c).is_dir()]
    if missing:
        raise InvMMInputError(f"model {root}: {what} needs {', '.join(missing)} (found: {listing})")


def model_index(root: Path) -> dict:
    """model_index.json (the pipeline's own settings), or {} for a folder without one."""
    path = root / "model_index.json"
    return read_json(path, f"model {root}") if path.exists() else {}


def load_tokenizers(root: Path, classes: dict[str, type]) -> list:
    """Tokenizers by folder name, with a clear error for one that does not load."""
    try:
        return [cls.from_pretrained(root / name, local_files_only=True) for name, cls in classes.items()]
    except Exception as exc:
        raise InvMMInputError(f"model {root}: a tokenizer could not be loaded: {exc}") from exc


VAE_CLASSES = ("AutoencoderKL", "VQModel")


def read_folder(root: Path) -> ModelFolder:
    """The configs detection reads: the scheduler's (required: the noise schedule the model was trained with), the
    denoiser's and model_index.json."""
    listing = ", ".join(sorted(p.name for p in root.iterdir())) or "nothing"
    scheduler = root / "scheduler" / "scheduler_config.json"
    if not scheduler.exists():
        raise InvMMInputError(
            f"model {root}: no scheduler (scheduler/scheduler_config.json is missing; found: {listing}). "
            "invmm needs the noise schedule the model was trained with; save the pipeline with "
            "save_pretrained so the scheduler config is included."
        )

    def config(name):
        path = root / name / "config.json"
        return read_json(path, f"model {root}") if path.exists() else None

    return ModelFolder(root, listing, read_json(scheduler, f"model {root}"), config("unet"), config("transformer"),
                       model_index(root))


def load_vae(folder: ModelFolder, allow_pickle: bool, names=("vae",)) -> tuple[object, dict] | tuple[None, None]:
    """The folder's VAE (the first of `names` present) and its config.json as saved, or (None, None)."""
    import diffusers

    vae_dir = next((folder.root / n for n in names if (folder.root / n / "config.json").exists()), None)
    if vae_dir is None:
        return None, None
    saved = read_json(vae_dir / "config.json", f"model {folder.root}")
    cls = saved.get("_class_name")
    if cls not in VAE_CLASSES:
        raise InvMMInputError(f"model {folder.root}: {vae_dir.name}/config.json declares {cls!r}; expected one of "
                              f"{VAE_CLASSES}")
    return load_component(getattr(diffusers, cls), vae_dir, allow_pickle, folder.root), saved


def no_vae_no_scale(folder: ModelFolder, latent_scale) -> None:
    if latent_scale is not None:
        raise InvMMInputError(f"model {folder.root}: --latent-scale needs a VAE, and this pixel-space model has none")


def build(cls, root: Path, *args, **kwargs):
    """The adapter, with the adapters' own checks of what the components declare as input errors."""
    try:
        return cls(*args, **kwargs)
    except ValueError as exc:
        raise InvMMInputError(f"model {root}: {exc}") from exc
