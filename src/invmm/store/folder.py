"""Opening a run folder, the one store every kind of run uses (an InvMM run of measure or audit, evaluate's
scores): create it, or, to resume, check that it was made the same way."""

from __future__ import annotations

import hashlib
from pathlib import Path

from invmm.config import stored_config
from invmm.families.loading import device_kind
from invmm.store.artifacts import ARTIFACT_NAMES, legacy_problems, migrate_legacy
from invmm.store.files import LEDGER_FILE, RUN_FILE, Ledger, atomic_write_json, open_folder, read_run_info

# How the model was loaded (--resolution, --latent-scale) changes every score as much as the config does.
MODEL_SETTINGS = ("resolution", "scaling_factor")


def model_settings(model: dict) -> dict:
    """What of the model's loading changes scores beyond its weights: resolution, latent scale, each LoRA (its
    file's sha256 and scale; not where the file lies) and the inference-time mitigations with their settings."""
    out = {k: model.get(k) for k in MODEL_SETTINGS}
    out["loras"] = [f"{r['sha256'][:12]} x {r['scale']}" for r in model.get("loras") or []]
    out["mitigations"] = mitigation_text(model.get("mitigations"))
    return out


def mitigation_text(mitigations) -> str:
    """--mitigation as a run records it: each mitigation with its settings, or none."""
    if not mitigations:
        return "none"
    return "; ".join(m["name"] + "(" + ", ".join(f"{k}={m[k]}" for k in sorted(m) if k != "name") + ")"
                     for m in mitigations)


def settings_diff(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def next_free(run_dir: Path) -> Path:
    n = 2
    while (run_dir.parent / f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.parent / f"{run_dir.name}-{n}"


def open_run(run_dir: Path, info: dict, *, resume: bool) -> tuple[Ledger, int]:
    """An InvMM run folder (measure, audit): created; or, with resume, reopened when its model weights, config
    and model settings are those of `info`. A run written before per-image file names were unique has its files
    renamed (or, where two images shared files, is refused with the reason). Returns the ledger and the bytes
    cut from a torn last line."""
    run_dir = Path(run_dir)
    info = {**info, "artifact_names": ARTIFACT_NAMES}
    keys = []

    def differences(old, new):
        if old.get("artifact_names") != ARTIFACT_NAMES:
            keys.extend((r.id, r.repeat) for r in Ledger(run_dir).read())
        return _run_differences(old, new) + legacy_problems(run_dir, old, keys)

    def update(old, new):
        if old.get("artifact_names") != ARTIFACT_NAMES:
            migrate_legacy(run_dir, keys)
            old["artifact_names"] = ARTIFACT_NAMES
        return _resumed(old, new)

    _, torn = open_folder(run_dir, info, ledger=LEDGER_FILE, resume=resume, what="a run",
                          hint="Rerun with the same settings to resume, or add --force-new to start over in a new "
                               "folder", differences=differences, update=update)
    return Ledger(run_dir), torn


def _run_differences(old: dict, info: dict) -> list[str]:
    changed = []
    if old.get("model_fingerprint") != info["model_fingerprint"]:
        changed.append(f"model weights ({old.get('model_path')} fingerprint {old.get('model_fingerprint', '')[:12]}"
                       f" -> {info['model_path']} {info['model_fingerprint'][:12]})")
    diff = settings_diff(stored_config(old.get("config", {})), info["config"])
    if diff:
        changed.append("config " + "; ".join(diff))
    diff = settings_diff(model_settings(old.get("model", {})), model_settings(info["model"]))
    if diff:
        changed.append("model settings " + "; ".join(diff))
    changed += device_differences(old, info)
    changed += design_differences(old.get("design"), info.get("design"))
    if old.get("mask") != info.get("mask"):
        changed.append(f"mask {mask_text(old.get('mask'))} -> {mask_text(info.get('mask'))}")
    if old.get("shard") != info.get("shard"):
        changed.append(f"dataset part (--shard) {part_text(old.get('shard'))} -> {part_text(info.get('shard'))}")
    return changed


def device_differences(old: dict, info: dict) -> list[str]:
    """A resume computes on the kind of device the run began on: CPU and GPU kernels differ in the last digits,
    and a silently changed --device auto would mix them in one ledger. (A Ray run's workers choose their own.)"""
    if old.get("backend", "local") != "local" or info.get("backend", "local") != "local" or "device" not in old:
        return []
    if device_kind(old["device"]) == device_kind(info["device"]):
        return []
    return [f"device {old['device']} -> {info['device']} (give --device {device_kind(old['device'])} to go on "
            "where the run began)"]


def design_differences(old: dict | None, new: dict | None) -> list[str]:
    """A resumed audit inverts the same strata and the same sample. A run made before designs were recorded is a
    census of what it inverted: resuming it the same way is no change, adding a sample is."""
    if old is None:
        return [] if not (new or {}).get("sample") else ["design: a sample added to a run made without one"]
    a, b = design_digest(old), design_digest(new)
    diff = [k for k in a if a[k] != (b or {}).get(k)]
    return [f"design ({', '.join(diff)}: the population, the census or the sample changed)"] if diff else []


def design_digest(design: dict | None) -> dict | None:
    """What a resume must find unchanged: the population, the strata and the sample (by the hash of their ids)."""
    if not design:
        return None
    sample = design.get("sample") or {}
    census = design.get("census") or {}
    return {"population": design.get("population"), "population ids": design.get("population_ids_sha256"),
            "seed": design.get("seed"), "census": census.get("kind"),
            "census ids": ids_sha256(census.get("ids") or []), "sample size": sample.get("m"),
            "sample ids": ids_sha256(sample.get("ids") or sample.get("candidates") or [])}


def ids_sha256(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def mask_text(mask: dict | None) -> str:
    if not mask:
        return "none (the whole image)"
    if mask.get("path"):
        return f"{mask['path']} (sha256 {mask['sha256'][:12]})"
    return f"{mask['source']} masks of {mask.get('n', '?')} images (sha256 {mask.get('sha256', '')[:12]})"


def part_text(shard: dict | None) -> str:
    return f"{shard['index']}/{shard['of']}" if shard else "the whole dataset"


def _resumed(old: dict, info: dict) -> dict:
    old.setdefault("resumed", []).append({"at": info["created"], "dataset_hash": info["dataset"]["hash"],
                                          "n": info["dataset"]["n"],
                                          "backend": info["backend"], "repeats": info.get("repeats", 1)})
    # A resume may ask for more repeats (they are added) or fewer (the ledger keeps what it has).
    old["repeats"] = max(old.get("repeats", 1), info.get("repeats", 1))
    return old


def add_session(run_dir: Path, session: dict) -> None:
    """Cost accounting for the report: a session that was killed is missing, never double counted."""
    info = read_run_info(run_dir)
    info.setdefault("sessions", []).append(session)
    atomic_write_json(Path(run_dir) / RUN_FILE, info)
