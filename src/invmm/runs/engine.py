"""The one run engine: InvMM over a list of images into a run folder, on the local or the Ray backend.

`invmm measure` is a run without resume (a new folder, or none), `invmm audit` a run with resume. The
driver alone writes the folder: run.json once, then one ledger line per finished image (flushed and
fsync'd) after that image's artifacts were moved into place, and a session line with its cost at the end.
Resuming skips (id, repeat) pairs already in the ledger, cuts a torn last line, and refuses a folder whose
config, model weights or model settings differ; a resume with more --repeats adds the missing repeats.
Images are decoded only when a batch slot frees up; an image's repeats are more rows of the same batches.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from invmm.config import InvMMConfig, check_captions, check_config_for_model
from invmm.errors import InvMMInputError
from invmm.families import load_options
from invmm.inversion import Inverter, Outcome, Target, check_grid
from invmm.inversion.conditioning import check_class_labels
from invmm.records import InversionRecord
from invmm.runs.artifacts import write_image_artifacts
from invmm.runs.files import RUN_FILE
from invmm.runs.folder import add_session, next_free, open_run
from invmm.runs.images import ImageItem, load_image
from invmm.runs.info import dataset_hash, run_info
from invmm.runs.lock import RunLock
from invmm.runs.ray_backend import run_on_ray
from invmm.similarity import build_similarity

BACKENDS = ("local", "ray")


@dataclass
class RunSummary:
    run_dir: Path | None
    total: int  # inversions asked for: images x repeats
    already_done: int = 0
    scored: int = 0
    errors: int = 0
    not_reproduced: int = 0
    seconds: float = 0.0
    torn_bytes: int = 0
    error_ids: list[str] = field(default_factory=list)
    results: list[InversionRecord] = field(default_factory=list)  # this session's ledger lines, when asked to keep them
    images: int = 0
    repeats: int = 1
    calls: Counter = field(default_factory=Counter)  # model calls of this session (invmm.cost)
    screen: dict | None = None  # what a screen kept (audit with --screen)


def run_images(
    adapter,
    items: list[ImageItem],
    config: InvMMConfig,
    out: str | Path | None,
    *,
    kind: str,
    resume: bool,
    backend: str = "local",
    batch_images: int = 8,
    repeats: int = 1,
    force_new: bool = False,
    allow_pickle: bool = False,
    ray_address: str | None = None,
    gpus_per_worker: float = 1.0,
    workers: int | None = None,
    max_retries: int = 2,
    data_source: str = "",
    keep_results: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[InversionRecord], None] | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    on_workers: Callable[[list], None] | None = None,
    run_extra: dict | None = None,
) -> RunSummary:
    """InvMM `repeats` times for every item not yet in the run folder `out` (None: no folder, results in
    memory only). Every session's ledger lines are per repeat; records.summarise summarises them per image."""
    if backend not in BACKENDS:
        raise InvMMInputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if batch_images < 1:
        raise InvMMInputError(f"--batch-images must be >= 1, got {batch_images}")
    if repeats < 1:
        raise InvMMInputError(f"--repeats must be >= 1, got {repeats}")
    check_config_for_model(adapter, config)
    check_captions(adapter, config, items)
    check_class_labels(adapter, items)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvMMInputError(f"image id {dup!r} appears twice; ids must be unique")
    similarity = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and force_new and (run_dir / RUN_FILE).exists():
        run_dir = next_free(run_dir)

    ledger, torn = None, 0
    with RunLock(run_dir) if run_dir is not None else contextlib.nullcontext():
        if run_dir is not None:
            info = run_info(kind, adapter, seed=config.seed, config=config.to_json(),
                            check_grid=check_grid(adapter, config), similarity=similarity.describe(),
                            dataset={"source": data_source, "n": len(items), "hash": dataset_hash(items)},
                            backend=backend, batch_images=batch_images, repeats=repeats, **(run_extra or {}))
            ledger, torn = open_run(run_dir, info, resume=resume)
        done = {(r.id, r.repeat) for r in ledger.read()} if ledger is not None else set()
        missing = {it.id: [r for r in range(repeats) if (it.id, r) not in done] for it in items}
        todo = [it for it in items if missing[it.id]]
        total = len(items) * repeats
        summary = RunSummary(run_dir, total=total, already_done=total - sum(map(len, missing.values())),
                             torn_bytes=torn, images=len(items), repeats=repeats)
        if on_start:
            on_start(total, summary.already_done)
        by_id = {it.id: it for it in todo}
        left = {it.id: len(missing[it.id]) for it in todo}  # an image's pixels are freed after its last repeat
        model_path = adapter.describe().get("source")

        def record(res: InversionRecord, outcome: Outcome | None = None) -> None:
            it = by_id.get(res.id)
            if it is not None:
                res.path, res.caption, res.label = it.path, it.caption, it.label
                res.resized = it.resized
                res.original_size = list(it.original_size) if it.original_size else None
            res.model = model_path
            res.seed = config.seed
            if ledger is not None:
                if outcome is not None and outcome.mu is not None and it is not None and it.pixels is not None:
                    write_image_artifacts(run_dir, res.id, it.pixels, outcome, repeat=res.repeat)
                ledger.append(res)  # last: a line in the ledger means the repeat and its files are complete
            if it is not None:
                left[res.id] -= 1
                if left[res.id] == 0:
                    it.pixels = None  # the image is done; free its memory
            summary.calls.update(res.calls or {})
            summary.scored += res.status == "ok"
            summary.not_reproduced += res.status == "ok" and not res.success
            if res.status != "ok":
                summary.errors += 1
                if res.id not in summary.error_ids:  # one entry per image, whatever its repeats
                    summary.error_ids.append(res.id)
            if keep_results:
                summary.results.append(res)
            if on_result:
                on_result(res)

        def targets() -> Iterator[Target]:
            # An image is decoded when a slot frees up; an unusable one is recorded (once per repeat, so a
            # resume does not retry it) and skipped. Its repeats follow it as more rows of the batch.
            for it in todo:
                load_image(it, mode=adapter.image_mode, size=adapter.image_size)
                for rep in missing[it.id]:
                    if it.error:
                        record(InversionRecord(id=it.id, path=it.path, status="error", error=it.error,
                                               error_kind="input", repeat=rep))
                    else:
                        yield Target(id=it.id, pixels=it.pixels, path=it.path, caption=it.caption,
                                     class_label=it.class_label, original_size=it.original_size, repeat=rep)

        t0 = time.perf_counter()
        n_workers, worker_device = 1, str(adapter.device)
        if backend == "local":
            Inverter(adapter, config, similarity, batch_images=batch_images).run(
                targets(), on_done=lambda o: record(o.result, o), on_step=on_step, keep=False)
        else:
            n_workers, worker_device = run_on_ray(
                targets(), model_path, config, batch_images=batch_images, record=record, address=ray_address,
                gpus_per_worker=gpus_per_worker, workers=workers, max_retries=max_retries,
                allow_pickle=allow_pickle, on_workers=on_workers, load_options=load_options(adapter))
        summary.seconds = time.perf_counter() - t0
        if run_dir is not None:
            add_session(run_dir, {"started": info["created"], "seconds": round(summary.seconds, 2),
                                  "scored": summary.scored, "errors": summary.errors, "backend": backend,
                                  "workers": n_workers, "device": worker_device, "calls": dict(summary.calls)})
    return summary
