"""The screen stage on a Ray cluster: the cheap scorer as a Ray Data `map_batches` actor pool.

Each actor loads the model and builds the scorer once; Ray Data streams the pending images through the
pool in batches (decoding happens in the actors) and the records back to the driver, which appends each one
to RUN/screen as it arrives, so an interrupted screen resumes like the local one. A screen scorer's score
depends only on the seed and the image, never on its batch mates, so the records equal the local ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import torch

from invmm.data.images import ImageItem
from invmm.mitigations import load_mitigated
from invmm.runs.ray_backend import _cluster_slots, ray_session
from invmm.runs.scores import ScoreRecord, score_items
from invmm.scorers import build_scorer
from invmm.scorers.base import CHEAP_BATCH


class ScreenWorker:
    """Runs inside a Ray Data actor."""

    def __init__(self, model: str, device: str, spec: str, seed: int, allow_pickle: bool, load_options: dict,
                 threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.adapter = load_mitigated(model, device=device, allow_pickle=allow_pickle, **load_options)
        self.scorer = build_scorer(spec, self.adapter)
        self.seed = seed

    def __call__(self, batch: dict) -> dict:
        items = [ImageItem(**json.loads(line)) for line in batch["item"]]
        records = score_items(self.scorer, self.adapter, items, self.seed)
        return {"record": [json.dumps(r.to_json()) for r in records]}


def score_on_ray(items: list[ImageItem], spec: str, *, model: str, seed: int, allow_pickle: bool = False,
                 load_options: dict | None = None, address: str | None = None, gpus_per_worker: float = 1.0,
                 workers: int | None = None) -> Iterator[ScoreRecord]:
    """Yields one record per item, in the order the pool finishes them."""
    with ray_session(address, data=True) as ray:
        n, resources, device = _cluster_slots(ray, gpus_per_worker, workers)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI shows its own
        # One JSON string per image: None stays None (a column of all-None captions has no Arrow type).
        rows = [{"item": json.dumps({"id": it.id, "path": it.path, "label": it.label, "caption": it.caption,
                                     "class_label": it.class_label, "ref": it.ref})}
                for it in items]
        ds = ray.data.from_items(rows).map_batches(
            ScreenWorker, batch_size=CHEAP_BATCH, batch_format="numpy", concurrency=max(1, n),
            fn_constructor_kwargs={"model": model, "device": device, "spec": spec, "seed": seed,
                                   "allow_pickle": allow_pickle, "load_options": load_options or {},
                                   "threads": 1 if device == "cpu" else None},
            **resources)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for line in batch["record"]:
                yield ScoreRecord.from_json(json.loads(line))
