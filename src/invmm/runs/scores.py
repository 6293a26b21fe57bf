"""Scores of a labelled dataset under several scorers, kept in a run folder and reused.

The run folder holds run.json (model, seed, dataset, every scorer's settings) and scores.jsonl, one line
per (image, scorer), appended durably as each batch finishes. Running again with the same folder skips
what is there, so evaluation (evaluate_run.py) never recomputes a score, and an interrupted scoring resumes.

Caption-level scorers (`needs_image = False`) score each row's caption: their rows need no image file, and
where there is one it is not decoded for them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from invmm.config import stored_config
from invmm.data.datasets import load_dataset
from invmm.data.images import ImageItem, load_image
from invmm.data.reader import batched, prefetch
from invmm.errors import InvMMInputError
from invmm.inversion.conditioning import check_class_labels, given_condition
from invmm.records import score_from_json, score_to_json
from invmm.scorers import SCORERS, ScorerError, build_scorer, parse_spec, split_specs
from invmm.store.files import Ledger, iter_lines, open_folder, read_run_info
from invmm.store.folder import device_differences, model_settings, part_text, settings_diff
from invmm.store.info import run_info
from invmm.store.lock import RunLock

SCORES_FILE = "scores.jsonl"


@dataclass
class ScoreRecord:
    id: str
    scorer: str
    score: float  # +inf allowed (InvMM: not reproduced); NaN: no score (status "error")
    label: str | None = None
    path: str = ""
    caption: str | None = None
    status: str = "ok"
    error: str | None = None
    error_kind: str | None = None  # "input": the image could not be read (the scorer never saw it)
    seconds: float | None = None  # wall seconds per image of the batch it was scored in
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["score"], d["score_is_inf"] = score_to_json(self.score)
        if self.error_kind is None:  # lines stay as they were
            d.pop("error_kind")
        return d

    @classmethod
    def from_json(cls, d: dict) -> ScoreRecord:
        d = dict(d)
        d["score"] = score_from_json(d.get("score"), d.pop("score_is_inf", False))
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def read_scores(run_dir: Path) -> list[ScoreRecord]:
    return Ledger(run_dir, SCORES_FILE, ScoreRecord).read()


def read_run(run_dir: Path) -> dict:
    return read_run_info(run_dir, "scores run (give --model and --data to create one)")


def open_scores(run_dir: Path, adapter, items: list[ImageItem], scorers, seed: int, shard: dict | None = None) -> dict:
    """Create the scores folder, or reopen one made with the same model, seed, labels and scorer settings, adding
    the new scorers and images to its run.json (the run-folder store: store/files.open_folder)."""
    dataset = [{"id": it.id, "path": it.origin, "label": it.label, "caption": it.caption} for it in items]
    # A part records the whole dataset it was cut from (as an audit part does), so merge refuses parts of others.
    whole = {"kind": getattr(items, "kind", None), **{k: v for k, v in getattr(items, "info", {}).items()
                                                      if k in ("whole", "content_sha256")}}
    info = run_info("scores", adapter, seed=seed, dataset=dataset, scorers={s.name: s.to_json() for s in scorers},
                    **({"shard": shard, "dataset_whole": whole} if shard else {}))
    info, _ = open_folder(run_dir, info, ledger=SCORES_FILE, resume=True, what="scores",
                          hint="Reuse the same settings to add to it, or give another --out",
                          differences=_score_differences, update=_added)
    return info


def _score_differences(old: dict, info: dict) -> list[str]:
    changed = []
    model, was = info["model"], old.get("model", {})
    if was.get("source") != model.get("source"):
        changed.append(f"model was {was.get('source')!r}, now {model.get('source')!r}")
    diff = settings_diff(model_settings(was), model_settings(model))
    if diff:
        changed.append("model settings " + "; ".join(diff))
    changed += device_differences(old, info)
    if old.get("seed") != info["seed"]:
        changed.append(f"seed was {old.get('seed')}, now {info['seed']}")
    if old.get("shard") != info.get("shard"):
        changed.append(f"dataset part (--shard) {part_text(old.get('shard'))} -> {part_text(info.get('shard'))}")
    for name, s in info["scorers"].items():
        prev = old.get("scorers", {}).get(name)
        if prev is not None and isinstance(prev.get("config"), dict):  # InvMM: fields added since, at their old values
            prev = {**prev, "config": stored_config(prev["config"])}
        if prev is not None and _canonical(prev) != _canonical(s):
            diffs = sorted(k for k in set(prev) | set(s) if prev.get(k) != s.get(k))
            changed.append(f"scorer {name!r} settings differ ({', '.join(diffs)})")
    known = {d["id"]: d for d in old.get("dataset", [])}
    for d in info["dataset"]:
        if d["id"] in known and known[d["id"]].get("label") != d["label"]:
            changed.append(f"image {d['id']!r} was labelled {known[d['id']].get('label')!r}, now {d['label']!r}")
            break
    return changed


def _added(old: dict, info: dict) -> dict:
    known = {d["id"]: d for d in old.get("dataset", [])}
    old["scorers"] = {**old.get("scorers", {}), **info["scorers"]}
    old["dataset"] = list(known.values()) + [d for d in info["dataset"] if d["id"] not in known]
    return old


def _canonical(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def score_dataset(adapter, items: list[ImageItem], scorers, run_dir: str | Path, *, seed: int = 0,
                  on_batch: Callable[[str, int, int], None] | None = None,
                  distribute: Callable | None = None, shard: tuple[int, int] | None = None) -> list[ScoreRecord]:
    """Score every (image, scorer) pair not yet in run_dir; returns all records of the run folder.

    `distribute(scorer, pending)`, where given, scores the pending images elsewhere (the Ray screen) and
    yields their records as they come; each is appended as it arrives, so an interruption loses nothing.
    `shard` (I, N): the items are part I of N of a dataset (data/split.py), recorded, and a reopen with another
    part is refused."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InvMMInputError(f"{run_dir} is a file; choose another --out")
    with RunLock(run_dir):  # one writer per run folder, as for measure and audit
        open_scores(run_dir, adapter, items, scorers, seed, {"index": shard[0], "of": shard[1]} if shard else None)
        ledger = Ledger(run_dir, SCORES_FILE, ScoreRecord)
        done = {(d["id"], d["scorer"]) for d in iter_lines(ledger.path)}
        todo = {s.name: [it for it in items if (it.id, s.name) not in done] for s in scorers}

        for scorer in scorers:
            pending = todo[scorer.name]
            size = scorer.batch_images
            if distribute is not None and pending:
                for n, record in enumerate(distribute(scorer, pending), 1):
                    ledger.append(record)
                    if on_batch and (n % size == 0 or n == len(pending)):
                        on_batch(scorer.name, n, len(pending))
                continue
            # Images are read and decoded on reading threads while the model scores the batch before.
            stream = prefetch(pending, lambda it: decoded(it, adapter)) if scorer.needs_image else pending
            done_n = 0
            for batch in batched(stream, size):
                ledger.extend(score_loaded(scorer, adapter, batch, seed))
                done_n += len(batch)
                if on_batch:
                    on_batch(scorer.name, done_n, len(pending))
        return read_scores(run_dir)


def load_scoring_dataset(data: str | Path, scorers: str, **reader) -> list[ImageItem]:
    """The labelled dataset `data` for the scorers `scorers` (specs, as score_with_specs takes them). When
    every requested scorer scores captions, the manifest may list captions without images; otherwise every
    row needs its image, and a row without one is refused here, before any model is loaded. `reader`: how
    load_dataset reads `data` (its kind, columns, split)."""
    names = []
    for spec in split_specs(scorers):
        name = parse_spec(spec)[0]
        if name not in SCORERS:
            raise ScorerError(f"unknown scorer {name!r}; available: {', '.join(SCORERS)}")
        names.append(name)
    image_scorers = [n for n in names if SCORERS[n].needs_image]
    caption_scorers = ", ".join(n for n, cls in SCORERS.items() if not cls.needs_image)
    items = load_dataset(data, labelled=True, captions_only_ok=True, **reader)
    imageless = [it for it in items if not it.path]
    if image_scorers and imageless:
        raise InvMMInputError(
            f"{data}: {len(imageless)} of {len(items)} row(s) have no image 'path' (first: {imageless[0].id}), "
            f"but the scorer(s) {', '.join(image_scorers)} score images. Give every row a 'path' to its image "
            f"file, or request only scorers that score captions ({caption_scorers})")
    if not image_scorers and not any(it.caption for it in items):
        raise InvMMInputError(
            f"{data}: no row has a caption, and the scorer(s) {', '.join(names)} score captions. Give a CSV, "
            "JSONL or Parquet manifest with a 'caption' column (caption,label[,id]; a 'path' is optional)")
    return items


def score_items(scorer, adapter, items: list[ImageItem], seed: int) -> list[ScoreRecord]:
    """One batch of images through one scorer: a record per image (an unreadable file gets an error record).
    Images are decoded here, from copies, so the caller's items stay light and a large dataset never has to
    fit in memory. A caption-level scorer decodes nothing: a row without a caption gets an error record."""
    if not scorer.needs_image:
        return _score_captions(scorer, items, seed)
    return score_loaded(scorer, adapter, [decoded(it, adapter) for it in items], seed)


def decoded(item: ImageItem, adapter) -> ImageItem:
    return load_image(dataclasses.replace(item), mode=adapter.image_mode, size=adapter.image_size)


def score_loaded(scorer, adapter, loaded: list[ImageItem], seed: int) -> list[ScoreRecord]:
    """score_items on items already decoded (copies, by _loaded); a caption-level scorer takes them as they are."""
    if not scorer.needs_image:
        return _score_captions(scorer, loaded, seed)
    check_class_labels(adapter, loaded)
    records = [ScoreRecord(it.id, scorer.name, math.nan, it.label, it.origin, it.caption, status="error",
                           error=it.error, error_kind="input") for it in loaded if it.error]
    chunk = [it for it in loaded if not it.error]
    return records + (_score_chunk(scorer, chunk, seed) if chunk else [])


def _score_chunk(scorer, chunk: list[ImageItem], seed: int) -> list[ScoreRecord]:
    t0 = time.perf_counter()
    scores = scorer.score(torch.stack([it.pixels for it in chunk]), [it.id for it in chunk],
                          [given_condition(it, scorer.adapter) for it in chunk], seed=seed)
    per_image = (time.perf_counter() - t0) / len(chunk)
    records = []
    for it, score in zip(chunk, scores):
        details = scorer.pop_details(it.id)
        error = details.pop("error", None)  # the scorer could not score this image (InvMM: it diverged)
        status = "error" if error else "ok"
        records.append(ScoreRecord(it.id, scorer.name, score, it.label, it.origin, it.caption, status=status,
                                   error=error, seconds=round(per_image, 4), details=details))
    return records


def _score_captions(scorer, items: list[ImageItem], seed: int) -> list[ScoreRecord]:
    # The image file's own state (missing, unreadable) does not matter here: only the caption is read.
    records = [ScoreRecord(it.id, scorer.name, math.nan, it.label, it.origin, it.caption, status="error",
                           error=f"row {it.id!r} has no caption; the {scorer.name} scorer scores captions")
               for it in items if not it.caption]
    chunk = [it for it in items if it.caption]
    if not chunk:
        return records
    t0 = time.perf_counter()
    scores = scorer.score_captions([it.caption for it in chunk], [it.id for it in chunk], seed=seed)
    per_item = round((time.perf_counter() - t0) / len(chunk), 4)
    return records + [ScoreRecord(it.id, scorer.name, score, it.label, it.origin, it.caption, seconds=per_item,
                                  details=scorer.pop_details(it.id)) for it, score in zip(chunk, scores)]


def score_with_specs(adapter, items: list[ImageItem], scorers: str, run_dir: str | Path, *, seed: int = 0,
                     batch_images: int = 8, repeats: int = 1, invmm_config=None,
                     on_batch: Callable[[str, int, int], None] | None = None,
                     shard: tuple[int, int] | None = None) -> list[ScoreRecord]:
    """score_dataset with scorers given as specs ("invmm,loss;pia:t=100"); every scorer is built (and a
    scorer the model cannot run refused) before any image is scored."""
    bound = [build_scorer(spec, adapter, invmm_config=invmm_config, batch_images=batch_images, repeats=repeats)
             for spec in split_specs(scorers)]
    return score_dataset(adapter, items, bound, run_dir, seed=seed, on_batch=on_batch, shard=shard)
