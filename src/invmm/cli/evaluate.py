"""`invmm evaluate`: the scorers on labelled images, and how well each separates the labels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from invmm.analysis.evaluate import choose_labels, evaluate_run
from invmm.cli.common import fail, load
from invmm.cli.options import BatchImages, DataOptions, InvMMOptions, ModelOptions, grouped
from invmm.data.split import parse_shard, select_part
from invmm.errors import InvMMInputError
from invmm.runs.scores import load_scoring_dataset, score_with_specs
from invmm.scorers import DEFAULT_SCORERS, ScorerError, default_scorers


@grouped(model_options=ModelOptions, invmm=InvMMOptions, data_options=DataOptions)
def command(
    run: Annotated[Path, typer.Argument(help="run folder for the scores (created, or reused: present scores are "
                                             "kept)")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    data_options: DataOptions,
    model: Annotated[str, typer.Option(help="diffusers model folder; with --data, scores missing from RUN are "
                                            "computed")] = None,
    data: Annotated[str, typer.Option(help="labelled images: a folder per label, or a CSV/JSONL/Parquet with "
                                           "path,label[,caption,class,id]; for caption-level scorers only "
                                           "(anisotropy, sharpness) the path may be left out: caption,label[,id]; "
                                           "or shards / a Hugging Face dataset with a label column (as for audit)")
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
    shard: Annotated[str, typer.Option(help="I/N: score only part I of N of the data (by image id), e.g. one per "
                                            "machine; `invmm merge` joins the N runs")] = None,
    batch_images: BatchImages = 8,
):
    """Compare scorers on labelled images: AUC and TPR at 1%/0.1% FPR with bootstrap 95% intervals, ROC and
    histogram PNGs, summary CSV. Scores already in RUN are reused; without --model/--data only evaluates.
    The InvMM options set the invmm scorer's config (its spec options override them); --seed seeds every
    scorer's draws."""
    if shard and model is None:
        fail("--shard chooses which images to score; give --model and --data too")
    if (model is None) != (data is None):
        fail("give both --model and --data to compute scores, or neither to evaluate the scores in RUN")
    try:
        if model is not None:
            # captions alone where every scorer scores captions
            items = load_scoring_dataset(data, scorers or ",".join(DEFAULT_SCORERS), **data_options.reader())
            part = parse_shard(shard) if shard else None
            if part:
                items = select_part(items, *part)
            choose_labels([it.label for it in items], positive or None, negative or None)  # before any scoring
            adapter, config = load(model, model_options, invmm)
            if scorers is None:
                scorers, left_out = default_scorers(adapter)
                for name, why in left_out.items():
                    typer.echo(f"default scorer {name} left out: it needs {why}, which this {adapter.family} "
                               "model has not", err=True)
            _score(adapter, items, scorers, run, invmm.seed, batch_images, repeats, config, part)
        rows, out = evaluate_run(run, positive=positive or None, negative=negative or None, n_boot=bootstrap,
                                 seed=invmm.seed)
    except (InvMMInputError, ScorerError) as exc:
        fail(str(exc))
    typer.echo((out / "summary.txt").read_text(encoding="utf-8"))
    typer.echo(f"\nwrote {out}/summary.csv, roc.png, histograms.png")


def _score(adapter, items, scorers, run, seed, batch_images, repeats, config, part) -> None:
    """Every missing score into RUN, with a progress bar per scorer (on a terminal)."""
    bars: dict[str, tqdm] = {}

    def progress(name, done, total):
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="img",
                                                           disable=not sys.stderr.isatty()))
        bar.n = done
        bar.refresh()

    try:
        score_with_specs(adapter, items, scorers, run, seed=seed, batch_images=batch_images, repeats=repeats,
                         invmm_config=config, on_batch=progress, shard=part)
    finally:
        for bar in bars.values():
            bar.close()
