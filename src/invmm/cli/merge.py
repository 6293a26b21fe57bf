"""`invmm merge`: the runs of one dataset audited in parts (`audit --shard I/N`) joined into one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from invmm.cli.common import fail
from invmm.errors import InvMMInputError
from invmm.runs.merge import merge_runs


def command(
    runs: Annotated[list[Path], typer.Argument(help="the run folders of the parts (audit or evaluate --shard I/N)")],
    out: Annotated[Path, typer.Option(help="the merged run folder (new)")],
    allow_incomplete: Annotated[bool, typer.Option(help="merge parts that lack results (interrupted) as they are; "
                                                        "the merged run.json and report say which and how "
                                                        "many")] = False,
):
    """Join the parts of one audit (or of one evaluate scoring) into one run that report, export and compare (or
    evaluate and dataset-test) read; refuses parts made with different settings or data, and overlapping parts."""
    try:
        s = merge_runs(runs, out, allow_incomplete=allow_incomplete)
    except InvMMInputError as exc:
        fail(str(exc))
    missing = sorted(set(range(1, s.of + 1)) - set(s.parts))
    typer.echo(f"{s.out}: parts {', '.join(map(str, s.parts))} of {s.of} merged: {s.images} images, {s.records} "
               "results" + (f"; {s.beyond_keep} results beyond the whole's --keep-top kept in beyond_keep.jsonl"
                            if s.beyond_keep else ""))
    if missing:
        typer.echo(f"not yet merged: part(s) {', '.join(map(str, missing))}; merge again with them into a new --out",
                   err=True)
