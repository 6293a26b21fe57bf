"""A run with masks (partial memorization): `--mask PATH`, a manifest's mask column, or `--mask auto`.

`--mask auto` measures in two passes. The first inverts every image whole (OUT/whole, a run folder of its own,
resumed with the rest); each image's memorization map (the mean over its repeats) thresholded at
functional.MAP_THRESHOLD gives its mask (OUT/whole/masks/ID.png, in the model's frame). The second pass, the
run in OUT, measures masked InvMM on those masks. An image the first pass reproduced whole keeps that result (an
all-ones mask would give it again), as does an image whose map marks nothing (there is no region to measure);
their records say so in `mask`.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from invmm.data.masks import attach_masks
from invmm.errors import InvMMInputError
from invmm.functional import MAP_THRESHOLD
from invmm.records import InversionRecord, summarise
from invmm.runs.engine import RunCallbacks, RunOptions, RunSummary, run_images
from invmm.store.artifacts import artifact_stem, copy_artifacts, load_map
from invmm.store.files import RUN_FILE, Ledger, atomic_write_bytes
from invmm.store.folder import next_free

AUTO = "auto"
FIRST_PASS = "whole"


def run_masked(adapter, items, config, out, *, kind: str, resume: bool, mask: str | Path | None,
               options: RunOptions, callbacks: RunCallbacks) -> RunSummary:
    """run_images with the masks asked for: none (the manifest's, if it names any), one file for every image, or
    `auto` (two passes, see the module doc). The run works on copies of the items (it attaches masks, records
    errors and releases pixels), so a caller's items stay as they were read and can be run again."""
    items = [dataclasses.replace(it) for it in items]
    if mask is None or str(mask) != AUTO:
        attach_masks(items, mask)
        return run_images(adapter, items, config, out, kind=kind, resume=resume, options=options, callbacks=callbacks)
    if not config.map_samples:
        raise InvMMInputError("--mask auto takes each image's mask from the memorization map of a first, whole-image "
                              "pass, and --map-samples 0 makes no maps: leave --map-samples at its default (8) or "
                              "set it above 0")
    named = [it for it in items if it.mask]
    if named:
        raise InvMMInputError(f"--mask auto: the dataset's manifest names masks already (first: {named[0].mask}); "
                              "give --mask auto or a manifest 'mask' column, not both")
    if out is None:  # measure without a folder: the first pass needs one for its maps
        with tempfile.TemporaryDirectory(prefix="invmm-auto-mask-") as tmp:
            return _auto(adapter, items, config, Path(tmp) / "run", kind, resume, options, callbacks)
    out = Path(out)
    if options.force_new and (out / RUN_FILE).exists():
        out = next_free(out)
    return _auto(adapter, items, config, out, kind, resume, dataclasses.replace(options, force_new=False), callbacks)


def _auto(adapter, items, config, out: Path, kind, resume, options: RunOptions, callbacks: RunCallbacks):
    whole_dir = out / FIRST_PASS
    first = run_images(adapter, [dataclasses.replace(it, pixels=None) for it in items], config, whole_dir,
                       kind=kind, resume=resume,
                       options=dataclasses.replace(options, keep_results=False, run_extra={
                           **(options.run_extra or {}), "auto_mask_pass": "first: every image whole"}),
                       callbacks=RunCallbacks(on_step=callbacks.on_step))
    records = list(Ledger(first.run_dir).read())
    summaries = {r.id: r for r in summarise(records)}
    by_id: dict[str, list] = {}
    for r in records:
        if r.status == "ok":
            by_id.setdefault(r.id, []).append(r)
    carried, masked = [], []
    (whole_dir / "masks").mkdir(exist_ok=True)
    for it in items:
        s = summaries.get(it.id)
        if s is None or s.status != "ok":  # an input error: the second pass records it again
            masked.append(it)
            continue
        reps = by_id.get(it.id, [])
        maps = [m for r in reps if (m := _map(first.run_dir, r)) is not None]
        region = (torch.stack(maps).mean(0) >= MAP_THRESHOLD) if maps else None
        if s.success or region is None or not bool(region.any()):
            why = "reproduced whole in the first pass" if s.success else "the first pass's map marks no region"
            carried += [(r, {"source": AUTO, "note": why}) for r in reps]
            continue
        path = whole_dir / "masks" / f"{artifact_stem(whole_dir, it.id).name}.png"
        _write_mask(path, region)
        it.mask, it.mask_source = str(path), AUTO
        masked.append(it)
    summary = run_images(adapter, masked, config, out, kind=kind, resume=resume, options=dataclasses.replace(
        options, run_extra={**(options.run_extra or {}), "auto_mask": {
            "first_pass": FIRST_PASS, "threshold": MAP_THRESHOLD, "masked": len(masked), "kept_whole": len(
                {r.id for r, _ in carried})}}), callbacks=callbacks)
    _carry(summary, first.run_dir, carried, options, callbacks)
    return summary


def _map(run_dir: Path, record: InversionRecord) -> torch.Tensor | None:
    path = Path(f"{artifact_stem(run_dir, record.id, record.repeat)}.safetensors")
    return load_map(path) if path.is_file() else None


def _write_mask(path: Path, region: torch.Tensor) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(region.numpy().astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _carry(summary: RunSummary, first_dir: Path, carried, options: RunOptions, callbacks: RunCallbacks) -> None:
    """The first pass's records of the images kept whole, into the run's ledger (once: a resume finds them),
    with their files."""
    ledger = Ledger(summary.run_dir)
    done = {(r.id, r.repeat) for r in ledger.read()}
    for record, mask in carried:
        if (record.id, record.repeat) in done:
            continue
        record = dataclasses.replace(record, mask=mask)
        copy_artifacts(first_dir, summary.run_dir, record.id, record.repeat)
        ledger.append(record)
        summary.total += 1
        summary.images += record.repeat == 0
        summary.scored += 1
        summary.not_reproduced += not record.success
        if options.keep_results:
            summary.results.append(record)
        if callbacks.on_result:
            callbacks.on_result(record)
