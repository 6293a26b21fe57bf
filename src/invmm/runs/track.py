"""`invmm track`: every checkpoint of a training run audited with the same data, settings and seeds, each into its
own ordinary run folder OUT/step-N (report, export, compare and assess read it), resumable; a checkpoint that appears
later is added by running the same command again. analysis/tracking.py turns the folders into OUT/track.json.

A checkpoint that is not a whole pipeline becomes a model here: a denoiser alone is audited as the `--base` pipeline
with that denoiser (a folder of links, OUT/models/step-N, so that every path that loads a model by its folder, Ray's
workers and resumes included, loads the same thing and the run's model fingerprint is that of the weights audited);
a LoRA is loaded onto `--base` as `--lora` would load it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from invmm.data.checkpoints import CHECKPOINT, Checkpoint
from invmm.errors import InvMMInputError
from invmm.families.lora import LoraSpec
from invmm.runs.audit import audit
from invmm.runs.engine import RunSummary

VIEWS_DIR = "models"


def run_folder(out: str | Path, step: int) -> Path:
    return Path(out) / f"step-{step}"


def denoiser_view(base: str | Path, cp: Checkpoint, dest: str | Path) -> Path:
    """`base`'s components with `cp`'s denoiser in place of its own, as a folder of links (copies where the file
    system has no links): the pipeline the checkpoint belongs to, loadable like any model folder."""
    base, dest = Path(base), Path(dest)
    if not base.is_dir():
        raise InvMMInputError(f"--base {base}: no such folder; give the pipeline checkpoint {cp.path} (step {cp.step}) "
                              "belongs to")
    index_file = base / "model_index.json"
    # Every component folder (one with its own config; the loaders read folders, not model_index.json's list), but
    # a training run's checkpoints (its logs hold no config).
    components = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and not CHECKPOINT.match(p.name) and p.name != "checkpoints" and any(p.glob("*.json")))
    if cp.denoiser not in components:
        raise InvMMInputError(f"checkpoint {cp.path} (step {cp.step}) holds a {cp.denoiser}/ but --base {base} has "
                              f"none (its components: {', '.join(components) or 'none'}); give the pipeline it was "
                              "trained in")
    if dest.exists():
        shutil.rmtree(dest)  # rebuilt every time: links are cheap, and a stale one would hide a changed base
    dest.mkdir(parents=True)
    if index_file.is_file():
        _link(index_file, dest / "model_index.json")
    for name in components:
        source = cp.path / name if name == cp.denoiser else base / name
        for f in sorted(source.rglob("*")):
            if f.is_file():
                _link(f, dest / name / f.relative_to(source))
    return dest


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # no symlinks here (some Windows setups, some mounts)
        shutil.copy2(source, target)


def model_of(cp: Checkpoint, base: str | Path | None, out: str | Path) -> tuple[str, list[LoraSpec]]:
    """The model folder to audit for a checkpoint and the LoRAs to load onto it."""
    if cp.kind == "pipeline":
        return str(cp.path), []
    if base is None:
        raise InvMMInputError(f"checkpoint {cp.path} (step {cp.step}) is not a whole pipeline; give --base MODEL")
    if cp.kind == "lora":
        return str(base), [LoraSpec(str(cp.path))]
    return str(denoiser_view(base, cp, Path(out) / VIEWS_DIR / f"step-{cp.step}")), []


@dataclass
class CheckpointRun:
    checkpoint: Checkpoint
    run_dir: Path
    summary: RunSummary | None = None
    error: str | None = None


@dataclass
class TrackRun:
    runs: list[CheckpointRun] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckpointRun]:
        return [r for r in self.runs if r.error]


def track(checkpoints: list[Checkpoint], items, out: str | Path, *, base: str | Path | None,
          load: Callable[[str, list[LoraSpec]], object], config_for: Callable[[object], object],
          on_checkpoint: Callable[[Checkpoint, Path], None] | None = None, run_extra: dict | None = None,
          **audit_options) -> TrackRun:
    """Audit every checkpoint into OUT/step-N in step order. `load(model_folder, loras)` gives the adapter and
    `config_for(adapter)` its InvMM config (the same settings and seed for every checkpoint); `audit_options` are
    runs.audit.audit's (screen, keep_top, sample, repeats, mask, ...). A checkpoint that cannot be loaded is recorded
    with its error and the others go on; an error past loading (settings, data, a run folder made differently) is
    raised, naming the step. Nothing already written is touched."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = TrackRun()
    for cp in checkpoints:
        run_dir = run_folder(out, cp.step)
        entry = CheckpointRun(cp, run_dir)
        result.runs.append(entry)
        if on_checkpoint:
            on_checkpoint(cp, run_dir)
        try:  # a checkpoint that cannot be loaded fails alone (half written, or broken): the others go on
            model, loras = model_of(cp, base, out)
            adapter = load(model, loras)
        except InvMMInputError as exc:
            message = str(exc)
            entry.error = message if str(cp.path) in message else f"checkpoint {cp.path}: {message}"
            continue
        # What fails past loading (the settings, the data, a run folder made differently) would fail at every
        # checkpoint alike: it stops the tracking, and what was audited so far stays.
        extra = {**(run_extra or {}), "track": {
            "step": cp.step, "checkpoint": str(cp.path), "kind": cp.kind,
            "base": str(base) if base is not None and cp.kind != "pipeline" else None}}
        try:
            entry.summary = audit(model, items, config_for(adapter), run_dir, adapter=adapter, run_extra=extra,
                                  **audit_options)
        except InvMMInputError as exc:
            raise InvMMInputError(f"step {cp.step} ({run_dir}): {exc}") from None
    return result
