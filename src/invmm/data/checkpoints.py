"""A training run's checkpoints, as diffusers' training scripts and accelerate write them: where each is and what it
holds, so that each can be audited as a model (the groundwork of `invmm track`, docs/how-to/ when it lands).

A training folder holds `checkpoint-N/` folders (N: the optimisation step). Each is one of:

- a whole pipeline (`model_index.json`): audited as it is;
- the denoiser alone: a `unet/` or `transformer/` folder (with its `config.json`), possibly beside accelerate's
  optimizer and random states: audited as the `--base` pipeline with that denoiser;
- LoRA weights (`pytorch_lora_weights.safetensors`, as diffusers' LoRA scripts save them, or a peft adapter folder,
  `adapter_config.json` + weights, the format of a pixel-space UNet's LoRA): audited as the `--base` pipeline with the
  LoRA loaded.

`explicit` (`--checkpoint STEP=PATH`, repeatable) adds any other layout; `final` (the training's output folder)
counts as the last step. Anything else in a `checkpoint-N` folder is an input error that names the folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from invmm.errors import InvMMInputError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_CONFIG = "adapter_config.json"
DENOISERS = ("unet", "transformer")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    kind: str  # "pipeline", "denoiser" or "lora"
    denoiser: str | None = None  # for "denoiser": the subfolder, unet or transformer


def classify(path: Path, step: int) -> Checkpoint:
    """What one checkpoint folder (or LoRA file) holds."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return Checkpoint(step, path, "lora")
    if not path.is_dir():
        raise InvMMInputError(f"checkpoint {path} (step {step}): no such folder or .safetensors file")
    if (path / "model_index.json").is_file():
        return Checkpoint(step, path, "pipeline")
    for name in DENOISERS:
        if (path / name / "config.json").is_file():
            return Checkpoint(step, path, "denoiser", name)
    if (path / LORA_FILE).is_file():
        return Checkpoint(step, path / LORA_FILE, "lora")
    if (path / PEFT_CONFIG).is_file():
        return Checkpoint(step, path, "lora")  # --lora reads the folder's weights beside its config
    raise InvMMInputError(f"checkpoint {path} (step {step}) holds no model: expected a whole pipeline "
                          "(model_index.json), a unet/ or transformer/ folder with its config.json, "
                          f"{LORA_FILE} or a peft adapter folder ({PEFT_CONFIG}); give another layout as "
                          "--checkpoint STEP=PATH")


def parse_explicit(spec: str) -> tuple[int, Path]:
    """`STEP=PATH` of `--checkpoint`."""
    step, sep, path = spec.partition("=")
    if not sep or not step.strip().isdigit() or not path:
        raise InvMMInputError(f"--checkpoint {spec!r}: expected STEP=PATH, e.g. --checkpoint 1500=runs/ft/step1500")
    return int(step), Path(path)


def default_base(training_dir: str | Path | None, base: str | Path | None = None) -> Path | None:
    """The pipeline a denoiser or LoRA checkpoint is audited on: `base` when given, else the training folder itself
    when it holds a whole pipeline (diffusers' scripts save the final model beside their checkpoints)."""
    if base is not None:
        return Path(base)
    if training_dir is not None and (Path(training_dir) / "model_index.json").is_file():
        return Path(training_dir)
    return None


def discover(training_dir: str | Path | None, *, explicit: list[str] = (), final: str | Path | None = None,
             final_step: int | None = None, base: str | Path | None = None) -> list[Checkpoint]:
    """Every checkpoint of a training run, by step. `final` (the trained model's folder) counts as the step after
    the last checkpoint unless `final_step` says which. A checkpoint that is not a whole pipeline needs a base
    (default_base)."""
    found: dict[int, Checkpoint] = {}

    def add(cp: Checkpoint) -> None:
        if cp.step in found:
            raise InvMMInputError(f"two checkpoints at step {cp.step}: {found[cp.step].path} and {cp.path}; "
                                  "give each step once")
        found[cp.step] = cp

    if training_dir is not None:
        root = Path(training_dir)
        if not root.is_dir():
            raise InvMMInputError(f"{root}: not a folder; give a training run's output folder (with checkpoint-N/ "
                                  "folders)")
        for child in sorted(root.iterdir()):
            m = CHECKPOINT.match(child.name)
            if m and child.is_dir():
                add(classify(child, int(m.group(1))))
    for spec in explicit:
        step, path = parse_explicit(spec)
        add(classify(path, step))
    if final is not None:
        step = final_step if final_step is not None else (max(found) + 1 if found else 0)
        add(classify(Path(final), step))
    if not found:
        raise InvMMInputError(f"{training_dir}: no checkpoint-N folders; give a training run's output folder, or "
                              "--checkpoint STEP=PATH")
    partial = [cp for cp in found.values() if cp.kind != "pipeline"]
    if partial and default_base(training_dir, base) is None:
        cp = partial[0]
        what = "a LoRA" if cp.kind == "lora" else f"the {cp.denoiser} alone"
        raise InvMMInputError(f"checkpoint {cp.path} (step {cp.step}) holds {what}; give the pipeline it belongs to "
                              "as --base MODEL")
    return [found[s] for s in sorted(found)]
