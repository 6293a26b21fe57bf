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
from dataclasses import dataclass, field, fields
from pathlib import Path

from invmm.config import InvMMConfig, check_captions, check_config_for_model
from invmm.data.images import ImageItem, load_image
from invmm.data.masks import hash_masks, load_item_mask
from invmm.data.reader import prefetch
from invmm.errors import InvMMInputError
from invmm.families import load_options
from invmm.inversion import Inverter, Outcome, Target, check_grid
from invmm.inversion.conditioning import check_class_labels
from invmm.records import InversionRecord
from invmm.runs.ray_backend import run_on_ray
from invmm.similarity import build_similarity
from invmm.store.artifacts import write_image_artifacts
from invmm.store.files import RUN_FILE
from invmm.store.folder import add_session, next_free, open_run
from invmm.store.info import dataset_hash, run_info
from invmm.store.lock import RunLock

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


@dataclass
class RunOptions:
    """How a run goes, beyond the InvMM config: the backend and its batches, repeats, the folder's fate."""

    backend: str = "local"
    batch_images: int = 8
    repeats: int = 1
    force_new: bool = False  # if the folder holds a run, start over in a new folder OUT-N
    allow_pickle: bool = False  # (Ray workers load the model again)
    ray_address: str | None = None
    gpus_per_worker: float = 1.0
    workers: int | None = None
    max_retries: int = 2  # a Ray worker's batch retried before its images are recorded as errors
    data_source: str = ""  # what run.json names as the dataset
    data_info: dict | None = None  # more of run.json's dataset: its kind, content hash, skipped rows, the shard
    keep_results: bool = False  # keep this session's ledger records in the summary (measure returns them)
    run_extra: dict | None = None  # more run.json fields (argv, a screen)


@dataclass
class RunCallbacks:
    on_start: Callable[[int, int], None] | None = None  # (inversions asked for, already done)
    on_result: Callable[[InversionRecord], None] | None = None  # each finished inversion
    on_step: Callable[[list[int]], None] | None = None  # the active images' steps
    on_workers: Callable[[list], None] | None = None  # the Ray actors, once started


def run_images(adapter, items: list[ImageItem], config: InvMMConfig, out: str | Path | None, *, kind: str,
               resume: bool, options: RunOptions | None = None, callbacks: RunCallbacks | None = None) -> RunSummary:
    """InvMM `options.repeats` times for every item not yet in the run folder `out` (None: no folder, results in
    memory only). Every session's ledger lines are per repeat; records.summarise summarises them per image."""
    opts, calls = options or RunOptions(), callbacks or RunCallbacks()
    _check_run(adapter, items, config, opts)
    masks = hash_masks(items)
    similarity = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and opts.force_new and (run_dir / RUN_FILE).exists():
        run_dir = next_free(run_dir)
    with RunLock(run_dir) if run_dir is not None else contextlib.nullcontext():
        info = None
        if run_dir is not None:
            info = run_info(kind, adapter, seed=config.seed, config=config.to_json(),
                            check_grid=check_grid(adapter, config), similarity=similarity.describe(),
                            dataset={"source": opts.data_source, "n": len(items), "hash": dataset_hash(items),
                                     **(opts.data_info or {})},
                            backend=opts.backend, batch_images=opts.batch_images, repeats=opts.repeats,
                            **({"mask": masks} if masks else {}), **(opts.run_extra or {}))
        session = _Session(adapter, items, config, run_dir, info, resume, opts, calls, similarity)
        t0 = time.perf_counter()
        n_workers, worker_device = 1, str(adapter.device)
        if opts.backend == "local":
            Inverter(adapter, config, similarity, batch_images=opts.batch_images).run(
                session.targets(), on_done=lambda o: session.record(o.result, o), on_step=calls.on_step, keep=False)
        else:
            n_workers, worker_device = run_on_ray(
                session.targets(), session.model_path, config, batch_images=opts.batch_images, record=session.record,
                address=opts.ray_address, gpus_per_worker=opts.gpus_per_worker, workers=opts.workers,
                max_retries=opts.max_retries, allow_pickle=opts.allow_pickle, on_workers=calls.on_workers,
                load_options=load_options(adapter))
        summary = session.summary
        summary.seconds = time.perf_counter() - t0
        if run_dir is not None:
            add_session(run_dir, {"started": info["created"], "seconds": round(summary.seconds, 2),
                                  "scored": summary.scored, "errors": summary.errors, "backend": opts.backend,
                                  "workers": n_workers, "device": worker_device, "calls": dict(summary.calls)})
    return summary


def _check_run(adapter, items: list[ImageItem], config: InvMMConfig, opts: RunOptions) -> None:
    """Refuse before anything is written what the run could not do."""
    if opts.backend not in BACKENDS:
        raise InvMMInputError(f"unknown backend {opts.backend!r}; use one of {', '.join(BACKENDS)}")
    if opts.batch_images < 1:
        raise InvMMInputError(f"--batch-images must be >= 1, got {opts.batch_images}")
    if opts.repeats < 1:
        raise InvMMInputError(f"--repeats must be >= 1, got {opts.repeats}")
    check_config_for_model(adapter, config)
    check_captions(adapter, config, items, per_item=True)
    check_class_labels(adapter, items)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvMMInputError(f"image id {dup!r} appears twice; ids must be unique")


class _Session:
    """One session of a run: what is left to do, and the driver's record of each finished inversion (its files,
    then its ledger line, the summary and the callbacks)."""

    def __init__(self, adapter, items, config, run_dir, info, resume, opts: RunOptions, calls: RunCallbacks,
                 similarity=None):
        self.adapter, self.config, self.run_dir, self.opts, self.calls = adapter, config, run_dir, opts, calls
        self.similarity = similarity
        self.ledger, torn = open_run(run_dir, info, resume=resume) if run_dir is not None else (None, 0)
        done = {(r.id, r.repeat) for r in self.ledger.read()} if self.ledger is not None else set()
        self.missing = {it.id: [r for r in range(opts.repeats) if (it.id, r) not in done] for it in items}
        self.todo = [it for it in items if self.missing[it.id]]
        total = len(items) * opts.repeats
        self.summary = RunSummary(run_dir, total=total, already_done=total - sum(map(len, self.missing.values())),
                                  torn_bytes=torn, images=len(items), repeats=opts.repeats)
        if calls.on_start:
            calls.on_start(total, self.summary.already_done)
        self.by_id = {it.id: it for it in self.todo}
        self.left = {it.id: len(self.missing[it.id]) for it in self.todo}  # pixels are freed after the last repeat
        self.model_path = adapter.describe().get("source")

    def targets(self) -> Iterator[Target]:
        # An image is decoded when a slot frees up (read a batch or two ahead, on reading threads); an unusable one
        # is recorded (once per repeat, so a resume does not retry it) and skipped. Its repeats follow it as more
        # rows of the batch.
        mode, size = self.adapter.image_mode, self.adapter.image_size
        ahead = 2 * self.opts.batch_images

        def load(it):
            load_image(it, mode=mode, size=size)
            mask, mask_info = load_item_mask(it, size)
            problem = self.similarity.mask_problem(mask) if mask is not None and self.similarity else None
            if problem:  # refused before any step, as an input error of this image naming its mask
                it.error, mask, mask_info = f"{it.mask}: {problem} (the mask of {it.origin})", None, None
            return it, mask, mask_info

        for it, mask, mask_info in prefetch(self.todo, load, ahead=ahead):
            for rep in self.missing[it.id]:
                if it.error:
                    self.record(InversionRecord(id=it.id, path=it.path, status="error", error=it.error,
                                                error_kind="input", repeat=rep))
                else:
                    yield Target(id=it.id, pixels=it.pixels, path=it.path, caption=it.caption,
                                 class_label=it.class_label, original_size=it.original_size, repeat=rep,
                                 mask=mask, mask_info=mask_info)

    def record(self, res: InversionRecord, outcome: Outcome | None = None) -> None:
        it, summary = self.by_id.get(res.id), self.summary
        if it is not None:
            res.path, res.caption, res.label, res.meta = it.origin, it.caption, it.label, it.meta
            res.resized = it.resized
            res.original_size = list(it.original_size) if it.original_size else None
        res.model = self.model_path
        res.seed = self.config.seed
        if self.ledger is not None:
            if outcome is not None and outcome.mu is not None and it is not None and it.pixels is not None:
                write_image_artifacts(self.run_dir, res.id, it.pixels, outcome, repeat=res.repeat)
            self.ledger.append(res)  # last: a line in the ledger means the repeat and its files are complete
        if it is not None:
            self.left[res.id] -= 1
            if self.left[res.id] == 0:
                it.pixels = None  # the image is done; free its memory
        summary.calls.update(res.calls or {})
        summary.scored += res.status == "ok"
        summary.not_reproduced += res.status == "ok" and not res.success
        if res.status != "ok":
            summary.errors += 1
            if res.id not in summary.error_ids:  # one entry per image, whatever its repeats
                summary.error_ids.append(res.id)
        if self.opts.keep_results:
            summary.results.append(res)
        if self.calls.on_result:
            self.calls.on_result(res)


def split_run_options(**kwargs) -> tuple[RunOptions, RunCallbacks]:
    """The run options and callbacks among keyword arguments (measure's and audit's)."""
    names = {f.name for f in fields(RunCallbacks)}
    unknown = set(kwargs) - names - {f.name for f in fields(RunOptions)}
    if unknown:
        raise TypeError(f"unexpected run option(s): {', '.join(sorted(unknown))}")
    return (RunOptions(**{k: v for k, v in kwargs.items() if k not in names}),
            RunCallbacks(**{k: v for k, v in kwargs.items() if k in names}))
