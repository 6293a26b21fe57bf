"""`invmm mitigation-eval`: did the mitigation work? (runs/mitigation_eval.py, analysis/mitigation_eval.py)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from invmm.analysis.mitigation_eval import format_summary
from invmm.cli.common import fail
from invmm.cli.options import DataOptions, InvMMOptions, ModelOptions, grouped
from invmm.data.datasets import load_dataset
from invmm.errors import InvMMInputError
from invmm.families.lora import lora_specs
from invmm.mitigations import MITIGATIONS, load_mitigated
from invmm.runs.mitigation_eval import MODES, evaluate_mitigations


@grouped(model_options=ModelOptions, invmm=InvMMOptions, data_options=DataOptions)
def command(
    model: Annotated[str, typer.Argument(help="diffusers model folder (a text-to-image model)")],
    triggers: Annotated[str, typer.Argument(help="the trigger images: a manifest with path and the training "
                                                 "caption")],
    model_options: ModelOptions,
    invmm: InvMMOptions,
    data_options: DataOptions,
    out: Annotated[Path, typer.Option(help="folder for mitigation.csv, side_effects.csv, summary.csv, "
                                           "mitigation.json and the inversions (resumable)")],
    others: Annotated[str, typer.Option(help="a manifest of other captions (not triggers), for the side "
                                             "effects; a 'path' is optional")] = None,
    generations: Annotated[int, typer.Option(min=1, help="plain generations per trigger (MemBench: 10)")] = 10,
    side_generations: Annotated[int, typer.Option(min=1, help="generations per other caption")] = 4,
    guidance: Annotated[float, typer.Option(help="guidance scale of the plain and side generations (default 7.5, "
                                                 "MemBench's; a model without classifier-free guidance: its "
                                                 "preset's largest)")] = None,
    modes: Annotated[str, typer.Option(help="the adversarial re-trigger's conditionings: known (the training "
                                            "caption), inverted (the conditioning inverted too), or both as "
                                            "known,inverted")] = "known,inverted",
    change_threshold: Annotated[float, typer.Option(help="side effects: a mitigated generation whose similarity to "
                                                         "the unmitigated one is below this counts as changed "
                                                         "(default: the copy threshold)")] = None,
    batch_images: Annotated[int, typer.Option("--batch-images", "-k", min=1, help="images inverted "
                                                                                    "together")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print mitigation.json's summary on stdout")] = False,
):
    """Did the mitigation work? For trigger images with their captions, each --mitigation (and none, the model as it
    is) judged three ways: plain re-trigger (generations from the caption, as MemBench), adversarial re-trigger
    (InvMM through the mitigated sampler) and side effects on other captions. Give --mitigation once per
    mitigation to compare; here they are evaluated one at a time, not composed."""
    specs = list(model_options.mitigation or [])
    model_options.mitigation = []  # each is loaded on its own below
    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    try:
        bad = [m for m in chosen if m not in MODES]
        if bad or not chosen:
            raise InvMMInputError(f"--modes {modes!r}: expected known, inverted or known,inverted")
        if not [s for s in specs if s.split(":")[0] != "none"]:
            raise InvMMInputError(f"give at least one --mitigation to evaluate ({', '.join(MITIGATIONS)})")
        model_options.chosen_device()
        trigger_items = data_options.load(triggers)
        other_items = list(load_dataset(others, captions_only_ok=True)) if others else []
    except InvMMInputError as exc:
        fail(str(exc))

    def load(spec):
        return load_mitigated(model, device=model_options.chosen_device(), allow_pickle=model_options.allow_pickle,
                              resolution=model_options.resolution, latent_scale=model_options.latent_scale,
                              loras=lora_specs(model_options.lora, model_options.lora_scale),
                              mitigations=[] if spec == "none" else [spec])

    def config_for(adapter, inverted):
        invmm.invert_prompt = inverted
        try:
            return invmm.config(adapter)
        except ValueError as exc:
            raise InvMMInputError(str(exc)) from None

    try:
        result = evaluate_mitigations(load, specs, list(trigger_items), other_items, config_for, out,
                                      generations=generations, side_generations=side_generations, guidance=guidance,
                                      modes=chosen, change_threshold=change_threshold, batch_images=batch_images,
                                      on_progress=lambda m: typer.echo(m, err=True))
    except InvMMInputError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(json.loads((out / "mitigation.json").read_text())["summary"], indent=1))
        return
    typer.echo(format_summary(result["summary"], result["settings"]["threshold"], generations))
    typer.echo(f"\nwrote {out / 'mitigation.csv'}, {out / 'side_effects.csv'} and {out / 'summary.csv'}")
