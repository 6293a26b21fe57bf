"""What every command does alike: exit codes, the error line, default run folders, loading the model."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import typer

from invmm.config import InvMMConfig
from invmm.errors import InvMMInputError

EXIT_NUMERICAL = 1  # an image's optimisation diverged
EXIT_INPUT = 2  # bad input: a file, folder or option


def fail(message: str, code: int = EXIT_INPUT):
    typer.echo(f"invmm: error: {message}", err=True)
    raise typer.Exit(code)


def deprecated(old: str, new: str) -> None:
    """An option spelled the old way: it still works for this release, and says what replaces it."""
    typer.echo(f"invmm: warning: {old} is deprecated and will be removed in the next release; use {new} (the same "
               "meaning)", err=True)


def default_out(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


def load(model: str, model_options, invmm_options=None, *, hub: bool = False) -> tuple[object, InvMMConfig | None]:
    """The adapter (with its LoRAs) and the InvMM config the user asked for, or a clear error and exit code 2."""
    try:
        adapter = model_options.load(model, hub=hub)
        return adapter, invmm_options.config(adapter) if invmm_options is not None else None
    except (InvMMInputError, ValueError) as exc:
        fail(str(exc))
