"""`invmm estimate`: what an audit will cost, before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.estimate import estimate, format_estimate
from invmm.cli.common import deprecated, fail, load
from invmm.cli.options import BatchImages, DataOptions, InvMMOptions, ModelOptions, Repeats, grouped
from invmm.config import check_config_for_model
from invmm.data.images import load_image
from invmm.errors import InvMMInputError
from invmm.similarity import build_similarity
from invmm.store.files import atomic_write_json


@grouped(model_options=ModelOptions, invmm=InvMMOptions, data_options=DataOptions)
def command(
    model: Annotated[str, typer.Argument(help="diffusers model folder")],
    data: Annotated[str, typer.Argument(help="the dataset, as for audit")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    data_options: DataOptions,
    json_out: Annotated[Path, typer.Option("--json-out", help="also write the estimate as JSON to this "
                                                              "file")] = None,
    json_file: Annotated[Path, typer.Option("--json", hidden=True, help="deprecated spelling of --json-out")] = None,
    repeats: Repeats = 1,
    batch_images: BatchImages = 8,
):
    """Before an audit: model calls per image and, from a short probe on the device, the hours if nothing is
    reproduced (every image runs its whole budget)."""
    if json_file is not None:  # --json is the switch that prints JSON elsewhere (dataset-test)
        deprecated("--json FILE", "--json-out FILE")
        json_out = json_file
    try:
        items = data_options.load(data)
    except InvMMInputError as exc:
        fail(str(exc))
    adapter, config = load(model, model_options, invmm)
    probe = next((it for it in items if load_image(it, mode=adapter.image_mode, size=adapter.image_size).pixels
                  is not None), None)
    if probe is None:
        fail(f"{data}: no readable image to probe with")
    try:
        check_config_for_model(adapter, config)
        sim = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    except InvMMInputError as exc:
        fail(str(exc))
    result = estimate(adapter, config, len(items), sim, probe.pixels, batch_images=batch_images, repeats=repeats)
    typer.echo(format_estimate(result))
    if json_out:
        atomic_write_json(json_out, result)
        typer.echo(f"\nwrote {json_out}")
