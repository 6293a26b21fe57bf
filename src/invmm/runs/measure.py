"""`invmm.measure`: images + a model -> one InvMM result per image, optionally written to a run folder.

A run of the engine (run/engine.py) without resume: a new folder, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from invmm.config import InvMMConfig, default_config
from invmm.data.images import ImageItem, collect_images
from invmm.families import load_adapter
from invmm.records import ImageSummary, InversionRecord, summarise
from invmm.runs.engine import RunCallbacks, RunOptions
from invmm.runs.masked import run_masked


def measure(
    model,
    images: Sequence[str | Path | ImageItem],
    config: InvMMConfig | None = None,
    *,
    out: str | Path | None = None,
    batch_images: int = 8,
    repeats: int = 1,
    device: str = "auto",
    allow_pickle: bool = False,
    hub: bool = False,
    backend: str = "local",
    on_result: Callable[[InversionRecord], None] | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    run_extra: dict | None = None,
    prompt: str | None = None,
    class_label: str | None = None,
    mask: str | Path | None = None,
) -> list[ImageSummary]:
    """Measure InvMM for each image. `model` is a diffusers folder (or hub id with hub=True) or an adapter.

    Images that cannot be used get a record with status "error" and a message; the others are measured.
    With `out`, the run folder gets run.json, results.jsonl (a line per image, as it finishes), and per
    image its fitted mu/logvar (safetensors) and a PNG of the target beside the last check's samples.
    With `repeats` R > 1 every image is inverted R times from independent streams (as more rows of the same
    batches); each returned Result then summarises its image (median score, successes out of R, interval,
    and every repeat in `repeats`; see invmm.repeats). Results come back in the order of `images`.
    `mask`: a mask file for every image (partial memorization: the check compares the masked region), or "auto"
    (runs/masked.py); images given as ImageItems may carry their own.
    """
    adapter = model if hasattr(model, "predict_x0") else load_adapter(
        str(model), device=device, hub=hub, allow_pickle=allow_pickle
    )
    config = config or default_config(adapter)
    items: list[ImageItem] = []
    for im in images:
        items.extend([im] if isinstance(im, ImageItem) else collect_images([str(im)]))
    if prompt is not None:
        for it in items:
            it.caption = it.caption if it.caption is not None else prompt
    if class_label is not None:
        for it in items:
            it.class_label = it.class_label if it.class_label is not None else str(class_label)
    summary = run_masked(adapter, items, config, out, kind="measure", resume=False, mask=mask, options=RunOptions(
        backend=backend, batch_images=batch_images, repeats=repeats, allow_pickle=allow_pickle, keep_results=True,
        run_extra=run_extra), callbacks=RunCallbacks(
        on_result=on_result, on_step=on_step, on_start=(lambda total, done: on_start(total)) if on_start else None))
    order = {it.id: i for i, it in enumerate(items)}
    return sorted(summarise(summary.results), key=lambda r: order.get(r.id, len(order)))
