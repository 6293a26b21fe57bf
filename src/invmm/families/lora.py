"""LoRA adapters on a loaded model, through the libraries that define them.

Each family declares its format (`Family.lora`, a `LoraFormat`): Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux
files (diffusers' format, as `save_lora_weights` and the usual trainers write them, including kohya's) go
through diffusers' own loaders, defined in those families' modules; a pixel- or latent-space `UNet2DModel` has
no diffusers LoRA loader, so its adapters are peft folders (`adapter_config.json` + `adapter_model.safetensors`,
as peft's `save_pretrained` writes them) injected with peft (PEFT_UNET, here). PixArt and DiT have none: their
`--lora` is refused. Every LoRA is scaled by its `--lora-scale` through peft's layer scales; scale 0 leaves the
base model's outputs unchanged. Each file's sha256 joins the run's model fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from invmm.errors import InvMMInputError
from invmm.families.base import Family, LoraFormat
from invmm.families.loading import PICKLE_SUFFIXES
from invmm.store.hashing import sha256_file

PREFERRED = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0


def lora_specs(paths, scales) -> list[LoraSpec]:
    """--lora PATH (repeatable) with --lora-scale: one scale for all, or one per LoRA in order."""
    paths, scales = list(paths or []), list(scales or [])
    if scales and not paths:
        raise InvMMInputError("--lora-scale scales a LoRA; give --lora PATH too")
    if len(scales) > 1 and len(scales) != len(paths):
        raise InvMMInputError(f"--lora-scale: give one scale for all LoRAs or one per --lora ({len(paths)}), "
                              f"got {len(scales)}")
    per = scales if len(scales) > 1 else [scales[0] if scales else 1.0] * len(paths)
    return [LoraSpec(str(p), float(s)) for p, s in zip(paths, per)]


def weights_file(path: str, allow_pickle: bool) -> Path:
    """The LoRA's weights file: the path itself, or the one weights file in a folder. Safetensors only,
    unless the user allowed pickle (unpickling an untrusted file can run code)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InvMMInputError(f"--lora {path}: no such file or folder")
    if p.is_dir():
        safe = sorted(p.glob("*.safetensors"))
        pick = [q for q in safe if q.name in PREFERRED] or safe
        if len(pick) > 1:
            raise InvMMInputError(f"--lora {path}: several weights files ({', '.join(q.name for q in safe)}); "
                                  "pass the file itself")
        if pick:
            return pick[0]
        pickles = sorted(q for q in p.iterdir() if q.suffix in PICKLE_SUFFIXES)
        if not pickles:
            raise InvMMInputError(f"--lora {path}: no LoRA weights in the folder (expected *.safetensors)")
        p = pickles[0]
    if p.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InvMMInputError(f"--lora {path}: {p.name} is a pickle file, which can execute code when loaded. "
                                  "Convert it to safetensors, or pass --allow-pickle if you trust the source.")
        return p
    if p.suffix != ".safetensors":
        raise InvMMInputError(f"--lora {path}: expected a .safetensors file or a folder holding one")
    return p


def apply_loras(family: Family, components: dict, specs: list[LoraSpec], *,
                allow_pickle: bool = False) -> list[dict]:
    """Load every LoRA into the model's components (in place) and scale it; returns what run.json records.

    `components`: "denoiser" and, where the model has them, "text_encoder", "text_encoder_2"."""
    if not specs:
        return []
    if family.lora is None:
        raise InvMMInputError(f"--lora: diffusers has no LoRA format for {family.name} models; audit the model with "
                              "the LoRA merged into its weights")
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    records, names = [], []
    for i, spec in enumerate(specs):
        f = weights_file(spec.path, allow_pickle)
        name = f"invmm_lora_{i}"
        try:
            expected = family.lora.load(components, f, name)
        except InvMMInputError:
            raise
        except Exception as exc:  # diffusers and peft raise many types for a file that does not fit
            raise InvMMInputError(f"--lora {spec.path}: could not be loaded into this {family.name} model ({exc}); "
                                  "is it a LoRA for this model's architecture?") from exc
        loaded = sum(_lora_tensors(comp, name) for comp in components.values() if comp is not None)
        if loaded == 0 or loaded < expected:
            raise InvMMInputError(
                f"--lora {spec.path}: {expected - loaded} of its {expected} LoRA tensors match no layer of this "
                f"{family.name} model; it was made for another architecture")
        names.append(name)
        records.append({"path": str(f), "sha256": sha256_file(f), "scale": spec.scale})
    for comp in components.values():
        if comp is not None and _lora_tensors(comp, None):
            set_weights_and_activate_adapters(comp, names, [s.scale for s in specs])
    return records


def _lora_tensors(module, name: str | None) -> int:
    """LoRA A/B tensors of adapter `name` (any adapter for None) in a module."""
    count = 0
    for n, _ in module.named_parameters():
        parts = n.split(".")
        if any(part in ("lora_A", "lora_B") and (name is None or parts[k + 1] == name)
               for k, part in enumerate(parts[:-1])):
            count += 1
    return count


def state_tensors(state: dict) -> int:
    return sum(1 for k in state if "lora" in k and not k.endswith(".alpha") and "alpha" not in k.rsplit(".", 1)[-1])


def fetch_options(f: Path) -> dict:
    """How diffusers' `lora_state_dict` reads exactly this local file."""
    return {"local_files_only": True, "weight_name": f.name,
            "use_safetensors": True if f.suffix == ".safetensors" else None}


def load_text_encoder_loras(loader, state: dict, alphas, components: dict, name: str,
                            prefixes=("text_encoder", "text_encoder_2")) -> None:
    """The text-encoder part of a diffusers LoRA file, into each encoder it has keys for (`loader`: the
    family's pipeline class, whose `load_lora_into_text_encoder` reads the format)."""
    for prefix in prefixes:
        if any(k.startswith(prefix + ".") for k in state):
            loader.load_lora_into_text_encoder(state, alphas, components[prefix], prefix=prefix, adapter_name=name)


def save_pipeline_lora(pipeline, out: Path, layers: dict, denoiser: str = "unet",
                       text_encoders=("text_encoder", "text_encoder_2")) -> Path:
    """peft LoRA layers written by the family's pipeline class (`save_lora_weights`), in peft's own key names
    (lora_A / lora_B), which diffusers' loaders read for every layer type; the older diffusers names (lora.down /
    lora.up) exist only for linear layers."""
    text = {f"{key}_lora_layers": layers[key] for key in text_encoders if key in layers}
    pipeline.save_lora_weights(out, **{f"{denoiser}_lora_layers": layers["denoiser"]}, safe_serialization=True,
                               **text)
    return out / "pytorch_lora_weights.safetensors"


def _load_peft(components: dict, f: Path, name: str) -> int:
    """A peft adapter folder into a UNet2DModel."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    model = components["denoiser"]
    config_path = f.parent / "adapter_config.json"
    if not config_path.exists():
        raise InvMMInputError(f"--lora {f}: a LoRA for a UNet2DModel (pixel or latent diffusion) is a peft adapter "
                              "folder; adapter_config.json is missing beside the weights")
    try:
        config = LoraConfig.from_pretrained(str(f.parent))
    except Exception as exc:  # peft raises JSON, type and value errors for a broken config
        raise InvMMInputError(f"--lora {f}: {config_path.name} is not a valid peft LoRA config ({exc})") from None
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(f)
    else:
        import torch

        state = torch.load(f, map_location="cpu", weights_only=True)
    inject_adapter_in_model(config, model, adapter_name=name)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise InvMMInputError(f"--lora {f}: {len(unexpected)} LoRA tensors match no layer of this model "
                              f"(e.g. {unexpected[0]}); it was made for another architecture")
    return state_tensors(state)


def _save_peft(components: dict, out: Path, layers: dict, adapter_name: str) -> Path:
    from safetensors.torch import save_file

    components["denoiser"].peft_config[adapter_name].save_pretrained(out)
    save_file({k: v.contiguous() for k, v in layers["denoiser"].items()}, out / "adapter_model.safetensors")
    return out / "adapter_model.safetensors"


# The LoRA format of a UNet2DModel (the ddpm and ldm families): a peft adapter folder.
PEFT_UNET = LoraFormat(load=_load_peft, save=_save_peft)


def save_lora(family: Family, components: dict, out: str | Path, *, adapter_name: str = "default") -> Path:
    """Write the peft LoRA layers of `components` (adapter `adapter_name`) in the format `apply_loras` reads for the
    family; returns the weights file."""
    from peft import get_peft_model_state_dict

    if family.lora is None:
        raise InvMMInputError(f"{family.name} models have no LoRA format")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = {key: get_peft_model_state_dict(comp, adapter_name=adapter_name) for key, comp in components.items()
              if comp is not None and _lora_tensors(comp, adapter_name)}
    return family.lora.save(components, out, layers, adapter_name)
