"""`invmm zoo ...`: train and export the toy models with planted memorization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from invmm.cli.common import fail
from invmm.cli.options import Seed
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import DigitsTrainConfig, export_images, load_manifest, train_digits, write_manifest_csv
from invmm.zoo.digits_dit import DigitsDiTConfig, train_digits_dit
from invmm.zoo.digits_lora import DigitsLoraConfig, train_digits_lora
from invmm.zoo.digits_t2i import DigitsT2IConfig, train_digits_t2i
from invmm.zoo.digits_template import (
    TEMPLATE_KIND,
    DigitsTemplateConfig,
    export_template_images,
    template_groups,
    train_digits_template,
)


def _fresh(out: Path, marker: str, what: str) -> None:
    if (out / marker).exists():
        fail(f"{out} already holds {what}; choose another --out")


CheckpointEvery = Annotated[int, typer.Option(help="also save OUT/checkpoint-N/ with the denoiser alone (unet/ or "
                                                "transformer/) every N steps, as diffusers' training scripts do (0: "
                                                "none); `invmm track OUT DATA --final OUT` audits them")]


def _train(train, config, out: Path) -> None:
    """A toy model trained into a fresh folder, logged as it goes."""
    _fresh(out, "model_index.json", "a model")
    manifest = train(config, out, log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


def train_digits_command(
    out: Annotated[Path, typer.Option(help="folder to write the diffusers model and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 8000,
    checkpoint_every: CheckpointEvery = 0,
):
    """Train the toy 8x8 digits DDPM with planted duplicates (8,000 steps: about 10.5 minutes on 2 CPU cores alone,
    15 with other work beside it)."""
    _train(train_digits, DigitsTrainConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every), out)


def train_digits_t2i_command(
    out: Annotated[Path, typer.Option(help="folder to write the text-to-image model and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 7000,
    checkpoint_every: CheckpointEvery = 0,
):
    """Train the toy text-to-image digits model ("a handwritten seven") with planted duplicated pairs."""
    _train(train_digits_t2i, DigitsT2IConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every), out)


def train_digits_dit_command(
    out: Annotated[Path, typer.Option(help="folder to write the class-conditional DiT and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 8000,
    checkpoint_every: CheckpointEvery = 0,
):
    """Train the toy class-conditional DiT on the digits (the class is the digit) with planted duplicates."""
    _train(train_digits_dit, DigitsDiTConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every), out)


def train_digits_template_command(
    out: Annotated[Path, typer.Option(help="folder to write the template toy model and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 8000,
    checkpoint_every: CheckpointEvery = 0,
):
    """Train the toy digits DDPM with planted template memorization: four 4x4 patterns, each pasted into its own
    quadrant of 64 different digits (partial memorization; 8,000 steps took 34 minutes on 2 CPU cores with other
    work beside it)."""
    _train(train_digits_template, DigitsTemplateConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every),
           out)


def train_lora_command(
    out: Annotated[Path, typer.Option(help="folder to write the LoRA, manifest.json and README.md to")],
    base: Annotated[Path, typer.Option(help="toy text-to-image model to fine-tune (default: the shipped "
                                            "one)")] = None,
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 3000,
    copies: Annotated[int, typer.Option(help="copies of each repeated planted image in the fine-tuning set")] = 32,
    checkpoint_every: Annotated[int, typer.Option(help="also save OUT/checkpoint-N/pytorch_lora_weights.safetensors "
                                                       "every N steps, as diffusers' LoRA scripts do (0: none)")] = 0,
):
    """Fine-tune a LoRA on the toy text-to-image model with planted memorization: digits the base never saw,
    with new captions, some repeated many times and some once; others held out from both."""
    _fresh(out, "manifest.json", "a LoRA")
    config = DigitsLoraConfig(seed=seed, steps=steps, copies=copies, checkpoint_every=checkpoint_every)
    try:
        manifest = train_digits_lora(base or shipped_digits_t2i_model(), config, out, log=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


def export_digits_command(
    out: Annotated[Path, typer.Option(help="folder for the PNGs")],
    model: Annotated[Path, typer.Option(help="toy model folder (default: the shipped one)")] = None,
    per_group: Annotated[int, typer.Option(help="template toy: only the first N images of each template and of "
                                                "each held-out layout (0: every image)")] = 0,
):
    """Write the toy model's images (train and held-out) as PNGs, plus manifest.csv; for the template toy, the
    images in OUT/images, their planted masks in OUT/masks and a manifest.csv with a mask column."""
    manifest = load_manifest(model or shipped_digits_model())
    if manifest.get("kind") == TEMPLATE_KIND:
        ids = [e["id"] for e in template_groups(manifest, per_group)] if per_group else None
        path = export_template_images(manifest, out, ids=ids)
        typer.echo(f"wrote {len(ids or manifest['images'])} images, their masks and {path.name} to {out}")
        return
    paths = export_images(manifest, out)
    write_manifest_csv(manifest, paths, out)
    typer.echo(f"wrote {len(paths)} images and manifest.csv to {out}")
