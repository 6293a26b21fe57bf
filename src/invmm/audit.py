"""`invmm audit`: a whole dataset, resumable, one writer: a run of the engine (run/engine.py) with resume."""

from __future__ import annotations

from pathlib import Path

from invmm.adapters.loading import load_adapter
from invmm.config import InvMMConfig
from invmm.images import ImageItem
from invmm.run.engine import RunSummary, run_images


def audit(model: str, items: list[ImageItem], config: InvMMConfig, out: str | Path, *, adapter=None,
          device: str = "cpu", allow_pickle: bool = False, **options) -> RunSummary:
    """InvMM for every item not yet in OUT's ledger. `options` are the engine's (backend, batch_images,
    force_new, ray_address, gpus_per_worker, workers, max_retries, data_source and the callbacks)."""
    adapter = adapter or load_adapter(model, device=device, allow_pickle=allow_pickle)
    return run_images(adapter, items, config, out, kind="audit", resume=True, allow_pickle=allow_pickle, **options)
