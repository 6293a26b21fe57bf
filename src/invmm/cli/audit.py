"""`invmm audit`: a whole dataset, resumable; optionally screened first."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from invmm.cli.common import EXIT_INPUT, fail, load
from invmm.cli.options import BatchImages, DataOptions, InvMMOptions, Mask, ModelOptions, grouped
from invmm.data.split import parse_shard, select_part
from invmm.errors import InvMMInputError
from invmm.runs.audit import audit
from invmm.scorers import SCREEN_SCORERS


@grouped(model_options=ModelOptions, invmm=InvMMOptions, data_options=DataOptions)
def command(
    model: Annotated[str, typer.Argument(help="diffusers model folder")],
    data: Annotated[str, typer.Argument(help="folder of images (recursive); a CSV/JSONL/Parquet manifest with "
                                             "path[,caption,class,id,label]; webdataset shards (a .tar, a brace "
                                             "pattern, a folder; img2dataset output); a Hugging Face dataset "
                                             "(save_to_disk folder, Parquet with an image column, imagefolder)")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    data_options: DataOptions,
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
    shard: Annotated[str, typer.Option(help="I/N: audit only part I of N of the dataset (by image id), e.g. one "
                                            "per machine; `invmm merge` joins the N runs")] = None,
    mask: Mask = None,
    sample: Annotated[int, typer.Option(min=1, help="also invert a simple random sample of M images (outside the "
                                                    "screen's top K with --screen; of the whole dataset without), "
                                                    "drawn by --seed, so that `invmm assess` can bound how many "
                                                    "of all the images the model reproduces")] = None,
    batch_images: BatchImages = 8,
):
    """Audit a whole dataset: InvMM per image into OUT/results.jsonl, resumable after any interruption."""
    try:
        model_options.chosen_device()  # said first: a GPU user sees at once where the audit will run
        items = data_options.load(data)
        population = [it.id for it in items]  # the whole dataset, which a part's sample is drawn from
        part = parse_shard(shard) if shard else None
        if part:
            if keep is not None:
                raise InvMMInputError("--shard with --screen takes --keep-top K, not --keep: each part inverts its "
                                      "own top K, and `invmm merge` keeps the top K of the whole, which lies "
                                      "within them")
            items = select_part(items, *part)
        say_dataset(items)
    except InvMMInputError as exc:
        fail(str(exc))
    adapter, config = load(model, model_options, invmm)
    progress = Progress(repeats)
    try:
        if screen is None and (keep is not None or keep_top is not None):
            raise InvMMInputError("--keep and --keep-top choose what a --screen keeps; give --screen SCORER too")
        s = audit(model, items, config, out, adapter=adapter, backend=backend, batch_images=batch_images,
                  repeats=repeats, screen=screen, keep=keep, keep_top=keep_top,
                  allow_pickle=model_options.allow_pickle, force_new=force_new, ray_address=address,
                  gpus_per_worker=gpus_per_worker, workers=workers, data_source=str(data), on_start=progress.start,
                  on_result=progress.result, run_extra={"argv": sys.argv}, data_info=items.describe(),
                  shard=part, mask=mask, sample=sample, population=population)
    except InvMMInputError as exc:
        fail(str(exc))
    finally:
        progress.close()
    if s.screen:
        typer.echo(f"screen {s.screen['scorer']}: {s.screen['kept']} of {s.screen['of']} images kept for InvMM "
                   f"(scores in {s.run_dir}/{s.screen['folder']})")
    if sample:
        typer.echo(f"sample: {sample} random images of the rest inverted too (the design is in run.json; "
                   f"`invmm assess {s.run_dir} --max-rate R` turns it into a statement about all the images)")
    what = f"{s.images} images x {s.repeats} repeats = {s.total} inversions" if s.repeats > 1 else f"{s.total} images"
    typer.echo(f"{s.run_dir}: {what}; {s.already_done} already done, {s.scored} scored now "
               f"({s.not_reproduced} not reproduced within the budget), {s.errors} errors, {s.seconds:.1f} s")
    if s.torn_bytes:
        typer.echo(f"resumed after a crash: cut a torn last ledger line ({s.torn_bytes} bytes)")
    if s.errors:
        typer.echo(f"errors are recorded in {s.run_dir}/results.jsonl (see `invmm report`)")
    if progress.input_errors:
        raise typer.Exit(EXIT_INPUT)  # unusable files: everything else was scored, but say so in the exit code


def say_dataset(items) -> None:
    """What the reader skipped or could not list, before the long part starts (run.json keeps it too)."""
    info = items.describe()
    for status, n in (info.get("skipped") or {}).items():
        typer.echo(f"dataset: {n} row(s) skipped as {status} (e.g. {info['skipped_examples'][status]})", err=True)
    for problem in info.get("problems") or []:
        typer.echo(f"dataset: {problem}", err=True)
    unusable = [it.error for it in items if it.error]
    if unusable:
        typer.echo(f"dataset: {len(unusable)} image(s) unusable as listed (first: {unusable[0]}); each is recorded "
                   "as an input error", err=True)


class Progress:
    """The audit's progress bar (on a terminal) and the images whose files were unusable."""

    def __init__(self, repeats: int):
        self.repeats, self.bar, self.seconds, self.input_errors = repeats, None, [], []

    def start(self, total, done):
        self.bar = tqdm(total=total, initial=done, unit="inv" if self.repeats > 1 else "img", desc="audit",
                        disable=not sys.stderr.isatty(), file=sys.stderr)

    def result(self, res):
        if res.status != "ok" and res.error_kind == "input":
            self.input_errors.append(res.id)
        if res.seconds is not None:
            self.seconds.append(res.seconds)
        if self.bar is not None:
            if self.seconds:
                self.bar.set_postfix_str(f"median {statistics.median(self.seconds):.1f} s/img", refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
