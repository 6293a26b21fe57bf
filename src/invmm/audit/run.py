"""`invmm audit`: a whole dataset, resumable, one writer.

The driver alone writes the run folder: run.json once, then one ledger line per finished image (flushed
and fsync'd) after that image's artifacts were moved into place. Resuming skips ids already in the
ledger, cuts a torn last line, and refuses a folder whose config or model weights differ.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from invmm.artifacts import write_image_artifacts
from invmm.audit.ledger import LEDGER_FILE, RUN_FILE, Ledger, atomic_write_json, repair_tail
from invmm.audit.lock import RunLock
from invmm.config import InvMMConfig
from invmm.errors import InvMMInputError
from invmm.images import ImageItem, load_image
from invmm.inversion import Outcome, Target, check_grid
from invmm.result import Result

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model"}


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the relative names and bytes of a model folder's weight and config files."""
    root = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and ".cache" not in p.parts and "checkpoints" not in p.relative_to(root).parts)
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def dataset_hash(items: list[ImageItem]) -> str:
    rows = [[it.id, it.path, it.caption, it.label] for it in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def next_free(run_dir: Path) -> Path:
    n = 2
    while (run_dir.parent / f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.parent / f"{run_dir.name}-{n}"


@dataclass
class AuditSummary:
    run_dir: Path
    total: int
    already_done: int = 0
    scored: int = 0
    errors: int = 0
    not_reproduced: int = 0
    seconds: float = 0.0
    torn_bytes: int = 0
    error_ids: list[str] = field(default_factory=list)


MODEL_SETTINGS = ("resolution", "scaling_factor")  # from --resolution and --latent-scale


def _config_diff(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def open_run(run_dir: Path, run_info: dict) -> tuple[Ledger, int]:
    """Create the run, or check an existing one matches; returns the ledger and bytes cut from a torn tail."""
    if (run_dir / RUN_FILE).exists():
        old = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        changed = []
        if old.get("model_fingerprint") != run_info["model_fingerprint"]:
            changed.append(f"model weights ({old.get('model_path')} fingerprint {old.get('model_fingerprint', '')[:12]}"
                           f" -> {run_info['model_path']} {run_info['model_fingerprint'][:12]})")
        diff = _config_diff(old.get("config", {}), run_info["config"])
        if diff:
            changed.append("config " + "; ".join(diff))
        # How the model was loaded changes every score as much as the config does.
        diff = _config_diff({k: old.get("model", {}).get(k) for k in MODEL_SETTINGS},
                            {k: run_info["model"].get(k) for k in MODEL_SETTINGS})
        if diff:
            changed.append("model settings " + "; ".join(diff))
        if changed:
            raise InvMMInputError(f"{run_dir} holds an audit made differently: {'; '.join(changed)}. Rerun with "
                                  "the same settings to resume, or add --force-new to start over in a new folder")
        torn = repair_tail(run_dir / LEDGER_FILE)
        old.setdefault("resumed", []).append({"at": run_info["created"], "dataset_hash": run_info["dataset"]["hash"],
                                              "backend": run_info["backend"]})
        atomic_write_json(run_dir / RUN_FILE, old)
        return Ledger(run_dir), torn
    if (run_dir / LEDGER_FILE).exists():
        raise InvMMInputError(f"{run_dir} has {LEDGER_FILE} but no {RUN_FILE}; it is not an audit folder this "
                              "tool wrote. Give another --out")
    return Ledger.create(run_dir, run_info), 0


def audit(
    model: str,
    items: list[ImageItem],
    config: InvMMConfig,
    out: str | Path,
    *,
    adapter=None,
    backend: str = "local",
    batch_images: int = 8,
    device: str = "cpu",
    allow_pickle: bool = False,
    force_new: bool = False,
    ray_address: str | None = None,
    gpus_per_worker: float = 1.0,
    workers: int | None = None,
    max_retries: int = 2,
    data_source: str = "",
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_workers: Callable[[list], None] | None = None,
    run_extra: dict | None = None,
) -> AuditSummary:
    from invmm.adapters.loading import load_adapter
    from invmm.measure import check_sampler_steps, package_versions
    from invmm.similarity import build_similarity

    run_dir = Path(out)
    if force_new and (run_dir / RUN_FILE).exists():
        run_dir = next_free(run_dir)
    adapter = adapter or load_adapter(model, device=device, allow_pickle=allow_pickle)
    check_sampler_steps(adapter, config)
    similarity = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvMMInputError(f"image id {dup!r} appears twice in the dataset; ids must be unique")
    run_info = {
        "kind": "audit",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": adapter.describe(),
        "model_path": str(model),
        "model_fingerprint": model_fingerprint(model) if Path(model).is_dir() else str(model),
        "config": config.to_json(),
        "check_grid": check_grid(adapter, config),
        "similarity": similarity.describe(),
        "seed": config.seed,
        "dataset": {"source": data_source, "n": len(items), "hash": dataset_hash(items)},
        "backend": backend,
        "batch_images": batch_images,
        "device": device,
        "versions": package_versions(),
        **(run_extra or {}),
    }
    with RunLock(run_dir):
        ledger, torn = open_run(run_dir, run_info)
        done = {r.id for r in ledger.read()}
        todo = [it for it in items if it.id not in done]
        summary = AuditSummary(run_dir, total=len(items), already_done=len(items) - len(todo), torn_bytes=torn)
        if on_start:
            on_start(len(items), summary.already_done)
        by_id = {it.id: it for it in todo}
        t0 = time.perf_counter()

        def record(res: Result, outcome: Outcome | None = None) -> None:
            it = by_id.get(res.id)
            if it is not None:
                res.path, res.caption, res.label = it.path, it.caption, it.label
                res.resized = it.resized
                res.original_size = list(it.original_size) if it.original_size else None
            res.model = str(model)
            res.seed = config.seed
            if outcome is not None and outcome.mu is not None and it is not None and it.pixels is not None:
                write_image_artifacts(run_dir, res.id, it.pixels, outcome)
                it.pixels = None  # the image is done; free its memory
            ledger.append(res)  # last: a line in the ledger means the image and its files are complete
            summary.scored += res.status == "ok"
            summary.not_reproduced += res.status == "ok" and not res.success
            if res.status != "ok":
                summary.errors += 1
                summary.error_ids.append(res.id)
            if on_result:
                on_result(res)

        def targets() -> Iterator[Target]:
            # Images load only when a slot frees up; an unusable one is recorded and skipped.
            for it in todo:
                load_image(it, mode=adapter.image_mode, size=adapter.image_size)
                if it.error:
                    record(Result(id=it.id, path=it.path, status="error", error=it.error, error_kind="input"))
                    continue
                yield Target(id=it.id, pixels=it.pixels, path=it.path, caption=it.caption)

        n_workers, worker_device = 1, str(adapter.device)
        if backend == "local":
            from invmm.inversion import Inverter

            Inverter(adapter, config, similarity, batch_images=batch_images).run(
                targets(), on_done=lambda o: record(o.result, o), keep=False)
        elif backend == "ray":
            from invmm.adapters.loading import load_options
            from invmm.audit.ray_backend import run_on_ray

            n_workers, worker_device = run_on_ray(
                targets(), str(model), config, batch_images=batch_images, record=record, address=ray_address,
                gpus_per_worker=gpus_per_worker, workers=workers, max_retries=max_retries,
                allow_pickle=allow_pickle, on_workers=on_workers, load_options=load_options(adapter))
        else:
            raise InvMMInputError(f"unknown backend {backend!r}; use local or ray")
        summary.seconds = time.perf_counter() - t0
        # Cost accounting for the report: a session that was killed is missing here, never double counted.
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        info.setdefault("sessions", []).append({
            "started": run_info["created"], "seconds": round(summary.seconds, 2), "scored": summary.scored,
            "errors": summary.errors, "backend": backend, "workers": n_workers, "device": worker_device})
        atomic_write_json(run_dir / RUN_FILE, info)
    return summary

