"""`invmm demo`: a dozen images of the shipped toy digits model."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer

from invmm.cli.common import default_out, fail, load
from invmm.cli.measure import measure_and_print
from invmm.cli.options import BatchImages, InvMMOptions, ModelOptions, Seed
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import demo_images, export_images, group_name, load_manifest

# The demo must finish in minutes on 2 CPU cores: a 1,000-step budget (the most duplicated toy images succeed
# within 150-1,000 steps), 50-step DDIM checks instead of 200, all 12 images in one batch.
DEMO_MAX_STEPS = 1000
DEMO_SAMPLER_STEPS = 50


def command(
    out: Annotated[Path, typer.Option(help="run folder (default: runs/demo-TIMESTAMP)")] = None,
    per_group: Annotated[int, typer.Option(help="images from each group (most duplicated, single-copy, "
                                                "held-out)")] = 4,
    max_steps: Annotated[int, typer.Option(help="optimisation budget per image")] = DEMO_MAX_STEPS,
    sampler_steps: Annotated[int, typer.Option(help="DDIM steps of the success check")] = DEMO_SAMPLER_STEPS,
    batch_images: BatchImages = 12,
    seed: Seed = 0,
):
    """Measure a dozen images of the shipped toy digits model: duplicated, single-copy and held-out."""
    model_options = ModelOptions()
    model_options.chosen_device()  # the first line: where the demo computes
    model_dir = shipped_digits_model()
    manifest = load_manifest(model_dir)
    chosen = demo_images(manifest, per_group)
    out = out or default_out("demo")
    if (out / "results.jsonl").exists():
        fail(f"output folder {out} already holds a run; choose another --out")
    paths = export_images(manifest, out / "inputs", ids=[e["id"] for e in chosen])
    groups = {e["id"]: e for e in chosen}
    typer.echo(f"toy model: {model_dir}")
    typer.echo("images: " + ", ".join(f"{e['id']} ({group_name(e)})" for e in chosen))
    adapter, config = load(str(model_dir), model_options, InvMMOptions(similarity="pixel", seed=seed,
                                                                        max_steps=max_steps,
                                                                        sampler_steps=sampler_steps))
    results = measure_and_print(adapter, [str(p) for p in paths], config, out=out, batch_images=batch_images,
                                run_extra={"argv": sys.argv})
    typer.echo("\nby group (median score; inf = not reproduced within the budget):")
    by_group: dict[str, list[float]] = {}
    for r in results:
        by_group.setdefault(group_name(groups[Path(r.id).stem]), []).append(r.score)
    for name, scores in by_group.items():
        typer.echo(f"  {name:>10}: median {statistics.median(scores):.4f}, "
                   f"{sum(map(math.isfinite, scores))}/{len(scores)} reproduced")
