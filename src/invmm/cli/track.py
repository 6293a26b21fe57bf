"""`invmm track`: memorization across a training run's checkpoints (runs/track.py, analysis/tracking.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.population import CONFIDENCE, Policy
from invmm.analysis.tracking import format_track, summarise_track, write_track
from invmm.cli.audit import Progress, say_dataset
from invmm.cli.common import EXIT_INPUT, fail
from invmm.cli.options import BatchImages, DataOptions, InvMMOptions, Mask, ModelOptions, grouped
from invmm.data.checkpoints import default_base, discover
from invmm.errors import InvMMInputError
from invmm.families.lora import lora_specs
from invmm.mitigations import load_mitigated
from invmm.runs.track import track
from invmm.scorers import SCREEN_SCORERS


@grouped(model_options=ModelOptions, invmm=InvMMOptions, data_options=DataOptions)
def command(
    training_dir: Annotated[Path, typer.Argument(help="a training run's output folder, with checkpoint-N/ folders as "
                                                      "diffusers' training scripts and accelerate write them (a "
                                                      "whole pipeline, a unet/ or transformer/ folder, or "
                                                      "pytorch_lora_weights.safetensors)")],
    data: Annotated[str, typer.Argument(help="the images to audit at every checkpoint (as `invmm audit` reads "
                                             "them; a label column gives the screen's member AUC)")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    data_options: DataOptions,
    out: Annotated[Path, typer.Option(help="folder of the tracking: one run folder per checkpoint (step-N/) and "
                                           "track.json; run the same command again to resume or to add new "
                                           "checkpoints")],
    base: Annotated[Path, typer.Option(help="the pipeline a checkpoint that holds only a denoiser or a LoRA belongs "
                                            "to (default: TRAINING_DIR when it holds a whole pipeline, as "
                                            "diffusers' scripts save the final one there)")] = None,
    checkpoint: Annotated[list[str], typer.Option(help="STEP=PATH: another checkpoint in any layout "
                                                       "(repeatable)")] = None,
    final: Annotated[Path, typer.Option(help="the trained model (a pipeline, a denoiser's pipeline folder or a LoRA): "
                                             "audited as the last step")] = None,
    final_step: Annotated[int, typer.Option(help="the step of --final (default: one after the last "
                                                 "checkpoint)")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="independent inversions per image (R)")] = 1,
    screen: Annotated[str, typer.Option(help="rank the images with this one-pass scorer first ("
                                             f"{', '.join(SCREEN_SCORERS)}, or auto) at every checkpoint; its "
                                             "member AUC joins the table")] = None,
    keep: Annotated[float, typer.Option(help="with --screen: the fraction of images to invert")] = None,
    keep_top: Annotated[int, typer.Option(help="with --screen: the number of images to invert")] = None,
    sample: Annotated[int, typer.Option(min=1, help="also invert a random sample of M images (see `invmm "
                                                    "audit`)")] = None,
    mask: Mask = None,
    batch_images: BatchImages = 8,
    backend: Annotated[str, typer.Option(help="local (default) or ray")] = "local",
    address: Annotated[str, typer.Option(help="Ray cluster address")] = None,
    max_rate: Annotated[float, typer.Option(help="mark the last safe checkpoint: every checkpoint up to it keeps "
                                                 "the upper bound on the share reproduced within this rate")] = None,
    confidence: Annotated[float, typer.Option(help="confidence of the bounds")] = CONFIDENCE,
    score_below: Annotated[float, typer.Option(help="count an image as reproduced only at a score at or below "
                                                    "this")] = None,
    positive: Annotated[list[str], typer.Option(help="label(s) of members, for the screen's AUC (default: guessed "
                                                     "from two labels)")] = None,
    negative: Annotated[list[str], typer.Option(help="label(s) of non-members (default: the other labels)")] = None,
    show: Annotated[int, typer.Option(help="images listed in the onset table (all are in track.json)")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="print track.json on stdout instead of the "
                                                         "tables")] = False,
):
    """Audit every checkpoint of a training run with the same data, settings and seeds (OUT/step-N, resumable), and
    say when the model started reproducing its training images, which ones, and the last safe checkpoint."""
    try:
        policy = Policy(max_rate, confidence=confidence) if max_rate is not None else None
        base = default_base(training_dir, base)
        checkpoints = discover(training_dir, explicit=checkpoint or [], final=final, final_step=final_step, base=base)
        model_options.chosen_device()
        items = data_options.load(data)
        population = [it.id for it in items]
        say_dataset(items)
        if screen is None and (keep is not None or keep_top is not None):
            raise InvMMInputError("--keep and --keep-top choose what a --screen keeps; give --screen SCORER too")
    except InvMMInputError as exc:
        fail(str(exc))
    extra_loras = lora_specs(model_options.lora, model_options.lora_scale)
    typer.echo(f"{len(checkpoints)} checkpoint(s): " + ", ".join(f"{c.step} ({c.kind})" for c in checkpoints),
               err=True)

    def load(model, loras):
        return load_mitigated(model, device=model_options.chosen_device(), allow_pickle=model_options.allow_pickle,
                              resolution=model_options.resolution, latent_scale=model_options.latent_scale,
                              loras=extra_loras + loras, mitigations=model_options.mitigation or [])

    def config_for(adapter):
        try:
            return invmm.config(adapter)
        except ValueError as exc:
            raise InvMMInputError(str(exc)) from None

    progress = [None]

    def starting(cp, run_dir):
        if progress[0] is not None:
            progress[0].close()
        progress[0] = Progress(repeats)
        typer.echo(f"step {cp.step}: {cp.path} -> {run_dir}", err=True)

    try:
        result = track(checkpoints, items, out, base=base, load=load, config_for=config_for, on_checkpoint=starting,
                       backend=backend, ray_address=address, batch_images=batch_images, repeats=repeats,
                       screen=screen, keep=keep, keep_top=keep_top, allow_pickle=model_options.allow_pickle,
                       data_source=str(data), on_start=lambda *a: progress[0].start(*a),
                       on_result=lambda r: progress[0].result(r), run_extra={"argv": sys.argv},
                       data_info=items.describe(), mask=mask, sample=sample, population=population)
    except InvMMInputError as exc:
        if progress[0] is not None:
            progress[0].close()
        fail(f"{exc}; the checkpoints audited before it are kept in {out}")
    if progress[0] is not None:
        progress[0].close()
    for r in result.runs:
        s = r.summary
        if s is not None:
            typer.echo(f"step {r.checkpoint.step}: {s.total} images; {s.already_done} already done, {s.scored} scored "
                       f"now ({s.not_reproduced} not reproduced), {s.errors} errors, {s.seconds:.1f} s", err=True)
    try:
        summary = summarise_track(out, policy=policy, score_below=score_below, positive=positive, negative=negative,
                                  errors={r.checkpoint.step: r.error for r in result.failed})
    except InvMMInputError as exc:
        fail(str(exc))
    path = write_track(out, summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
    else:
        typer.echo(format_track(summary, show=show))
        typer.echo(f"\nwrote {path} (`invmm report {out}` draws it)")
    for r in result.failed:
        typer.echo(f"invmm: error: step {r.checkpoint.step}: {r.error}", err=True)
    if result.failed:
        raise typer.Exit(EXIT_INPUT)
