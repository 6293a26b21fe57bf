"""`invmm assess RUN`: is this model safe to ship? One statement about the whole population the run audited, with
exact bounds, and a decision under a release policy (exit 0 go, 1 no-go, 3 undecided)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.assess import assess_run, format_assessment
from invmm.analysis.population import CONFIDENCE, Policy
from invmm.cli.common import fail
from invmm.errors import InvMMInputError
from invmm.store.files import atomic_write_json

EXIT_NO_GO = 1
EXIT_UNDECIDED = 3


def command(
    run: Annotated[Path, typer.Argument(help="an audit run folder (merged, if it was audited in parts)")],
    max_rate: Annotated[float, typer.Option(help="the policy: at most this share of the population reproduced, e.g. "
                                                 "0.001 (without it: the statement, no decision)")] = None,
    max_count: Annotated[int, typer.Option(help="the policy: at most this many reproduced images found")] = None,
    confidence: Annotated[float, typer.Option(help="confidence of the bounds the decision uses")] = CONFIDENCE,
    score_below: Annotated[float, typer.Option(help="count an image only when reproduced at a score at or below "
                                                    "this (more memorized)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the assessment as JSON on stdout")] = False,
    json_out: Annotated[Path, typer.Option(help="also write the assessment as JSON to this file")] = None,
):
    """How many of the audited images does the model reproduce, with what confidence, and does that pass the
    policy? go exits 0, no-go 1, undecided 3 (it then says how many more random images would decide)."""
    try:
        if max_rate is None and not 0 < confidence < 1:  # with a policy, Policy checks it
            raise InvMMInputError(f"--confidence must be in (0, 1), got {confidence}")
        if max_rate is None and max_count is not None:
            raise InvMMInputError("--max-count is part of a policy: give --max-rate too (1 for a count alone)")
        policy = Policy(max_rate, max_count, confidence) if max_rate is not None else None
        a = assess_run(run, policy, score_below=score_below, confidence=confidence)
    except InvMMInputError as exc:
        fail(str(exc))
    result = a.to_json()
    typer.echo(json.dumps(result, indent=1) if as_json else format_assessment(a))
    if json_out:
        atomic_write_json(json_out, result)
        if not as_json:
            typer.echo(f"\nwrote {json_out}")
    if a.decision == "no-go":
        raise typer.Exit(EXIT_NO_GO)
    if a.decision == "undecided":
        raise typer.Exit(EXIT_UNDECIDED)
