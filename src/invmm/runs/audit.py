"""`invmm audit`: a whole dataset, resumable, one writer: a run of the engine (run/engine.py) with resume.

With a screen (screen.py), a cheap scorer ranks every image first and InvMM runs on the most suspicious
part only; the screen's scores stay in RUN/screen and run.json records what was kept.
"""

from __future__ import annotations

from pathlib import Path

from invmm.config import InvMMConfig
from invmm.data.images import ImageItem
from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.runs.design import plan
from invmm.runs.engine import RunSummary, split_run_options
from invmm.runs.masked import run_masked
from invmm.runs.screen import run_screen
from invmm.store.files import RUN_FILE, read_run_info
from invmm.store.folder import next_free, part_text


def audit(model: str, items: list[ImageItem], config: InvMMConfig, out: str | Path, *, adapter=None,
          device: str = "auto", allow_pickle: bool = False, screen: str | None = None, keep: float | None = None,
          keep_top: int | None = None, on_screen=None, shard: tuple[int, int] | None = None,
          mask: str | Path | None = None, sample: int | None = None, population: list[str] | None = None,
          **options) -> RunSummary:
    """InvMM for every item not yet in OUT's ledger. `options` are the engine's (backend, batch_images,
    repeats, force_new, ray_address, gpus_per_worker, workers, max_retries, data_source and the callbacks).
    `screen` (a scorer spec, e.g. "loss" or "pia:t=100", or "auto") with `keep` (a fraction) or `keep_top` (a count)
    inverts only the images that scorer ranks as most suspicious. `shard` (I, N): `items` are part I of N of a
    dataset (data/split.py); run.json says so, and a resume with another part is refused. `mask`: one mask file
    for every item, or "auto" (runs/masked.py); without it, the masks a manifest names. `sample` M: also a simple
    random sample of M of the images outside the screen's top K (of all images without a screen), drawn by the
    seed (runs/design.py); `population`: the whole dataset's ids when `items` are a part of it. run.json records
    the design (`invmm assess` reads it)."""
    adapter = adapter or load_adapter(model, device=device, allow_pickle=allow_pickle)
    described = None
    if shard is not None:
        options["run_extra"] = {**(options.get("run_extra") or {}), "shard": {"index": shard[0], "of": shard[1]}}
    if screen:
        out = Path(out)
        if options.pop("force_new", False) and (out / RUN_FILE).exists():
            out = next_free(out)  # the screen's scores go with the new run, not into the old one
        elif (out / RUN_FILE).exists():  # a resume of another part would screen its images into this run first
            old = read_run_info(out).get("shard")
            new = {"index": shard[0], "of": shard[1]} if shard else None
            if old != new:
                raise InvMMInputError(f"{out} holds a run made differently: dataset part (--shard) {part_text(old)} "
                                      f"-> {part_text(new)}. Rerun with the same settings to resume, or add "
                                      "--force-new to start over in a new folder")
        ray = None
        if options.get("backend") == "ray":  # the screen is distributed too, on the same cluster settings
            ray = {"allow_pickle": allow_pickle, "address": options.get("ray_address"),
                   "gpus_per_worker": options.get("gpus_per_worker", 1.0), "workers": options.get("workers")}
        result = run_screen(adapter, items, screen, out, keep=keep, keep_top=keep_top, seed=config.seed,
                            on_batch=on_screen, ray=ray)
        kept = result.kept
        described = result.describe(keep, keep_top)  # `auto` recorded as what it stood for
        options["run_extra"] = {**(options.get("run_extra") or {}), "screen": described}
    else:
        kept = None
    items, design = plan(items, kept=kept, sample=sample, seed=config.seed,
                         population=population if shard is not None else None,
                         keep_top=keep_top if keep_top is not None else (len(kept) if kept is not None else None))
    options["run_extra"] = {**(options.get("run_extra") or {}), "design": design}
    run_options, callbacks = split_run_options(allow_pickle=allow_pickle, **options)
    summary = run_masked(adapter, items, config, out, kind="audit", resume=True, mask=mask, options=run_options,
                         callbacks=callbacks)
    summary.screen = described
    return summary
