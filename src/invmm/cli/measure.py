"""`invmm measure`: InvMM for a few images, as a table."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from invmm.cli.common import EXIT_INPUT, EXIT_NUMERICAL, default_out, fail, load
from invmm.cli.options import BatchImages, InvMMOptions, Mask, ModelOptions, Repeats, grouped
from invmm.errors import InvMMInputError
from invmm.runs.measure import measure


@grouped(model_options=ModelOptions, invmm=InvMMOptions)
def command(
    model: Annotated[str, typer.Argument(help="diffusers model folder (or a hub id with --hub)")],
    inputs: Annotated[list[str], typer.Argument(help="image files and/or folders (searched recursively)")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    out: Annotated[Path, typer.Option(help="run folder to create (default: runs/measure-TIMESTAMP)")] = None,
    prompt: Annotated[str, typer.Option(help="text-to-image: the images' training caption (known-caption "
                                             "mode)")] = None,
    class_label: Annotated[str, typer.Option(help="class-conditional models (DiT): the images' class, an index "
                                                  "or a class name (known-class mode)")] = None,
    hub: Annotated[bool, typer.Option(help="treat MODEL as a Hugging Face Hub id and download it")] = False,
    backend: Annotated[str, typer.Option(help="local (default) or ray (a local Ray cluster)")] = "local",
    repeats: Repeats = 1,
    mask: Mask = None,
    batch_images: BatchImages = 8,
):
    """Measure how strongly MODEL memorized each image (lower score = more memorized; inf = not reproduced)."""
    adapter, config = load(model, model_options, invmm, hub=hub)
    measure_and_print(adapter, inputs, config, out=out or default_out("measure"), batch_images=batch_images,
                      run_extra={"argv": sys.argv}, prompt=prompt, class_label=class_label, backend=backend,
                      repeats=repeats, mask=mask)


def measure_and_print(adapter, inputs, config, *, out, batch_images, run_extra=None, prompt=None, class_label=None,
                      backend="local", repeats=1, mask=None):
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
        results = measure(adapter, inputs, config, out=out, batch_images=batch_images, repeats=repeats,
                          backend=backend, on_result=on_result, on_step=on_step, on_start=on_start,
                          run_extra=run_extra, prompt=prompt, class_label=class_label, mask=mask)
    except InvMMInputError as exc:
        fail(str(exc))
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


def _score(r) -> str:
    if r.status != "ok":
        return "error"
    return "inf" if math.isinf(r.score) else f"{r.score:.4f}"


def _bound(v) -> str:
    return "-" if v is None else ("inf" if math.isinf(v) else f"{v:.4f}")


def format_table(results) -> str:
    """One row per image; with repeats, the score is the median and the row shows k/R and the interval."""
    repeated = any(r.n_repeats > 1 for r in results)
    refined = any(r.refined_score is not None for r in results)
    head = ("image", "score", "success", "steps", "min sim", "seconds")
    rows = [head[:2] + ("reproduced", "interval (coverage)") + head[3:] if repeated else head]
    if refined:
        rows[0] = rows[0][:2] + ("refined", "P(success)") + rows[0][2:]
    for r in results:
        stopped = bool(r.early_stop and r.early_stop.get("stopped"))
        row = [r.id, _score(r), "yes" if r.success else "no", f"{r.steps} stopped" if stopped else str(r.steps),
               "-" if r.min_similarity is None else f"{r.min_similarity:.3f}",
               "-" if r.seconds is None else f"{r.seconds:.1f}"]
        if repeated:
            interval = "-" if r.score_low is None else \
                f"[{_bound(r.score_low)}, {_bound(r.score_high)}] ({r.interval_coverage:.0%})"
            row[2:3] = [f"{r.successes or 0}/{r.n_repeats}", interval]
        if refined:
            row[2:2] = ["-" if r.refined_score is None or r.status != "ok" else _bound(r.refined_score),
                        "-" if r.refined_success is None or r.status != "ok" else f"{r.refined_success:.2f}"]
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r.measured_on == "mask" for r in results):  # say which scores are of a region (another scale)
        width = max(len(line) for line in lines)
        lines = [line.ljust(width) + "  " + cell for line, cell in zip(lines, ["region", "-" * 13] + [
            f"mask {r.mask['fraction']:.3f}" if r.measured_on == "mask" else "whole" for r in results])]
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
    if any(r.measured_on == "mask" for r in results):
        lines += ["", "region: what the check compared, a mask (its share of the image) or the whole image; "
                      "scores of the two are on different scales (docs/concepts/partial-memorization.md)"]
    if any(r.early_stop and r.early_stop.get("stopped") for r in results):
        lines += ["", "stopped: --early-stop ended the inversion before its budget (none of its samples, nor an "
                      "examination of more at the patience, was a copy); inf predicted, not a completed budget "
                      "(docs/concepts/early-stopping.md)"]
    if refined:
        lines += ["", "refined: the paper's score averaged over the success check's luck on the same inversion, "
                      "given a success within the budget; P(success): the estimated chance of one "
                      "(docs/concepts/refined-score.md)" + ("; the median over the repeats" if repeated else "")]
    return "\n".join(lines)
