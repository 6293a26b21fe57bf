"""What a run folder records about how it was made: versions, the model's fingerprint, the dataset's hash,
and the one run-info builder every kind of run (measure, audit, scores) uses."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("invmm", "torch", "diffusers", "transformers", "numpy", "onnxruntime", "safetensors", "pillow",
            "scikit-learn")
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model"}


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _training_state(parts: tuple[str, ...]) -> bool:
    """A training run's checkpoints inside the model folder (diffusers' scripts save the final pipeline beside its
    checkpoint-N/ folders): not part of the model, and they grow while training goes on."""
    return any(p == "checkpoints" or re.fullmatch(r"checkpoint-\d+", p) for p in parts[:-1])


def model_fingerprint(model_dir: str | Path, loras: list[dict] | None = None) -> str:
    """sha256 over the relative names and bytes of a model folder's weight and config files, and the sha256
    of each LoRA loaded onto it, in order; a model that is not a folder (a hub id, an adapter built in code)
    is named instead."""
    root = Path(model_dir)
    if loras:
        joined = model_fingerprint(model_dir) + "".join("+" + r["sha256"] for r in loras)
        return hashlib.sha256(joined.encode()).hexdigest()
    if not root.is_dir():
        return str(model_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and ".cache" not in p.parts and not _training_state(p.relative_to(root).parts))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def dataset_hash(items) -> str:
    # A class label joins the row only where there is one, so datasets hashed before classes keep their hash.
    rows = [[it.id, it.path, it.caption, it.label] + ([it.class_label] if it.class_label is not None else [])
            for it in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_info(kind: str, adapter, *, seed: int, **fields) -> dict:
    """run.json of a new run: its kind, the model as loaded (description, path, fingerprint), the seed,
    package versions, and the kind's own fields (config, dataset, scorers, backend, ...)."""
    model_path = adapter.describe().get("source") or type(adapter).__name__
    return {
        "kind": kind,
        "created": now(),
        "model": {**adapter.describe(), **({"mitigations": list(adapter.mitigations)}
                                           if getattr(adapter, "mitigations", None) else {})},
        "model_path": model_path,
        "model_fingerprint": model_fingerprint(model_path, adapter.loras),
        "seed": seed,
        "device": str(adapter.device),
        "versions": package_versions(),
        **fields,
    }
