"""`invmm estimate`: what an audit will cost, before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.assess import format_plan, planning
from invmm.analysis.estimate import estimate, format_estimate
from invmm.analysis.population import Policy
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
    max_rate: Annotated[float, typer.Option(help="plan a model-level audit: the random sample that reaches a go "
                                                 "at this policy (at most this share reproduced) if none of it "
                                                 "is, and what the design costs")] = None,
    keep_top: Annotated[int, typer.Option(help="with --max-rate: the census of the screen's top K the audit "
                                               "would invert too (`audit --screen S --keep-top K`)")] = None,
    confidence: Annotated[float, typer.Option(help="with --max-rate: the confidence of the gate")] = 0.95,
):
    """Before an audit: model calls per image and, from a short probe on the device, the hours if nothing is
    reproduced (every image runs its whole budget)."""
    if json_file is not None:  # --json is the switch that prints JSON elsewhere (dataset-test)
        deprecated("--json FILE", "--json-out FILE")
        json_out = json_file
    try:
        items = data_options.load(data)
        # the plan's policy is checked before the probe spends anything
        policy = Policy(max_rate, confidence=confidence) if max_rate is not None else None
        if keep_top is not None and not 0 <= keep_top <= len(items):
            raise InvMMInputError(f"--keep-top must be between 0 and the {len(items)} images, got {keep_top}")
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
    if policy is not None:
        plan = planning(len(items), policy, census=keep_top or 0)
        inversions = (plan["census"] + (plan["sample"] or 0)) * repeats
        plan["hours_worst_case"] = inversions * result["seconds_per_image_not_reproduced"] / 3600
        plan["forward_equivalents_worst_case"] = inversions * result["calls_per_image"]["high"]["forward_equivalents"]
        result["plan"] = plan
        typer.echo("\n" + format_plan(plan, confidence))
    if json_out:
        atomic_write_json(json_out, result)
        typer.echo(f"\nwrote {json_out}")
