"""Commands that read finished runs: `invmm report`, `invmm export`, `invmm compare`, `invmm dataset-test`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.compare import compare_runs, format_comparison, write_comparison
from invmm.analysis.dataset_inference import format_dataset_test, run_dataset_test, write_dataset_test
from invmm.analysis.population import Policy
from invmm.cli.common import deprecated, fail
from invmm.errors import InvMMInputError
from invmm.report.export import export_run
from invmm.report.html import build_report
from invmm.report.mitigations import build_mitigation_report, is_mitigation_folder
from invmm.report.track import build_track_report, is_track_folder


def report(
    run: Annotated[Path, typer.Argument(help="audit or measure run folder, or the --out folder of `invmm track` or "
                                             "`invmm mitigation-eval`")],
    top_k: Annotated[int, typer.Option(help="most memorized images shown with their check samples")] = 12,
    positive: Annotated[list[str], typer.Option(help="label(s) counted as memorized, for the ROC when labels "
                                                     "exist")] = None,
    negative: Annotated[list[str], typer.Option(help="a tracking: label(s) of non-members, for the screen's AUC "
                                                     "(default: as `invmm track` was given)")] = None,
    out: Annotated[Path, typer.Option(help="folder for index.html and the figures (default: RUN/report)")] = None,
    compare_with: Annotated[Path, typer.Option("--compare", help="a run of the base model over the same images: "
                                                                 "adds what this run's fine-tune added")] = None,
    by: Annotated[str, typer.Option(help="the score the report ranks, plots and compares by: paper, or refined (a "
                                         "run made with --refine)")] = "paper",
    rank_by: Annotated[str, typer.Option(hidden=True, help="deprecated spelling of --by")] = None,
    max_rate: Annotated[float, typer.Option(help="an audit's assessment decided under this policy: at most this "
                                                 "share of the population reproduced (as `invmm assess`)")] = None,
):
    """Write a self-contained HTML report of a run (offline: images inlined, no external scripts); an audit's
    opens with its assessment (as `invmm assess` prints it); a tracking's (`invmm track`) draws memorization against
    training step, the onsets and, with --max-rate, the last safe checkpoint."""
    if rank_by is not None:
        deprecated("--rank-by", "--by")
        by = rank_by
    try:
        if is_mitigation_folder(run):
            typer.echo(f"wrote {build_mitigation_report(run, report_dir=out)}")
            return
        if is_track_folder(run):
            page = build_track_report(run, policy=Policy(max_rate) if max_rate is not None else None,
                                      positive=positive or None, negative=negative or None, report_dir=out)
            typer.echo(f"wrote {page}")
            return
        page = build_report(run, top_k=top_k, positive=positive or None, out=out, compare_with=compare_with,
                            rank_by=by, policy=Policy(max_rate) if max_rate is not None else None)
    except InvMMInputError as exc:
        fail(str(exc))
    typer.echo(f"wrote {page}")


def export(
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
        fail(str(exc))
    typer.echo(f"wrote {path}")


def compare(
    base: Annotated[Path, typer.Argument(help="run folder on the base model")],
    finetune: Annotated[Path, typer.Argument(help="run folder on the fine-tune (same images and settings)")],
    out: Annotated[Path, typer.Option(help="folder for compare.csv and compare.html (default: "
                                           "FINETUNE/compare)")] = None,
    show: Annotated[int, typer.Option(help="rows printed (all are written)")] = 30,
    by: Annotated[str, typer.Option(help="the score compared: paper, or refined (both runs made with "
                                         "--refine)")] = "paper",
):
    """Base model vs fine-tune: per image both scores, the change, and the images the fine-tune made
    reproducible, sorted by what the fine-tune added."""
    try:
        comparison = compare_runs(base, finetune, by=by)
    except InvMMInputError as exc:
        fail(str(exc))
    files = write_comparison(comparison, out or finetune / "compare")
    typer.echo(format_comparison(comparison, limit=show))
    typer.echo(f"wrote {files['csv']} and {files['html']}")


def dataset_test(
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
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout (instead of the "
                                                         "table)")] = False,
):
    """Dataset inference (CDI): a p-value for "the model was trained on the suspect set", from the per-image scores
    of several scorers in RUN, against a reference set of known non-members from the same distribution."""
    try:
        result, extra = run_dataset_test(run, suspect, reference,
                                         scorers=[s.strip() for s in scorers.split(",")] if scorers else None,
                                         n_splits=splits, seed=seed, alpha=alpha, curve=curve)
    except InvMMInputError as exc:
        fail(str(exc))
    name = "-".join(suspect) + "-vs-" + "-".join(reference)
    files = write_dataset_test(result, run / "dataset_test" / name, f"{', '.join(suspect)} vs {', '.join(reference)}")
    if as_json:
        typer.echo(json.dumps({**result.to_json(), **extra}, indent=1))
        return
    typer.echo(format_dataset_test(result, suspect, reference))
    if extra["missing_scores"]:
        typer.echo(f"\nleft out (a scorer's score missing): {len(extra['missing_scores'])} images")
    typer.echo(f"\nwrote {', '.join(str(f) for f in files)}")
