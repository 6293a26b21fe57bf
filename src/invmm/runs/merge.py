"""`invmm merge`: the N runs of one dataset audited or scored in parts (`audit --shard I/N`, `evaluate --shard
I/N`) joined into one run folder that report, export and compare (audits) or evaluate and dataset-test (scores)
read like any other.

The parts must have been made the same way (model weights and settings, InvMM config and check grid, similarity,
repeats, screen, and the same whole dataset) and be distinct parts with no image in two of them; anything else
is refused, naming the runs. With a screen and --keep-top K each part inverted its own top K; the whole's top K
lies within them, and the merged run keeps exactly those, as one audit of the whole would have. The others'
results go to beyond_keep.jsonl rather than being lost. The parts' folders are only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from invmm.config import stored_config
from invmm.errors import InvMMInputError
from invmm.runs.artifacts import ARTIFACT_NAMES, artifact_stems, copy_artifacts
from invmm.runs.files import LEDGER_FILE, RUN_FILE, Ledger, atomic_write_bytes, atomic_write_json, read_run_info
from invmm.runs.folder import model_settings, settings_diff
from invmm.runs.lock import RunLock
from invmm.runs.scores import SCORES_FILE, ScoreRecord
from invmm.runs.screen import SCREEN_DIR, select_kept

BEYOND_FILE = "beyond_keep.jsonl"


@dataclass
class MergeSummary:
    out: Path
    parts: list[int]
    of: int
    records: int
    beyond_keep: int
    images: int


def _settings(info: dict) -> dict:
    """What must be equal across the parts."""
    if info.get("kind") == "scores":
        return {"model weights": info.get("model_fingerprint"),
                "model settings": model_settings(info.get("model", {})),
                "seed": info.get("seed"), "scorers": info.get("scorers")}
    screen = info.get("screen") or {}
    dataset = info.get("dataset") or {}
    return {"model weights": info.get("model_fingerprint"),
            "config": stored_config(info.get("config", {})),
            "model settings": model_settings(info.get("model", {})),
            "check grid": info.get("check_grid"),
            "similarity": info.get("similarity"),
            "repeats": info.get("repeats", 1),
            "screen": {k: screen.get(k) for k in ("scorer", "settings", "keep", "keep_top")} if screen else None,
            "dataset": {"whole": dataset.get("whole"), "content_sha256": dataset.get("content_sha256"),
                        "kind": dataset.get("kind")},
            # one --mask file for all (its hash), or a manifest's masks (each part hashes its own images' masks)
            "mask": {k: v for k, v in (info.get("mask") or {}).items() if k != "n" and
                     (k != "sha256" or info["mask"].get("path"))} or None,
            "automatic masks": (info.get("auto_mask") or {}).get("threshold")}


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                out.append(f"{key} ({'; '.join(settings_diff(a[key], b[key]))})")
            else:
                out.append(key)
    return out


def merge_runs(runs: list[str | Path], out: str | Path) -> MergeSummary:
    runs, out = [Path(r) for r in runs], Path(out)
    if not runs:
        raise InvMMInputError("give the run folders of the parts to merge")
    infos = [read_run_info(r, "audit or evaluate run") for r in runs]
    kind = infos[0].get("kind")
    for r, info in zip(runs, infos):
        if info.get("kind") not in ("audit", "scores") or not info.get("shard"):
            raise InvMMInputError(f"{r}: not a part of a dataset (an `invmm audit --shard I/N` or `invmm evaluate "
                                  "--shard I/N` run); merge joins the parts of one audit or one scoring")
        if info.get("kind") != kind:
            raise InvMMInputError(f"{r} is {'an audit' if info['kind'] == 'audit' else 'a scores run'}, "
                                  f"{runs[0]} is not: merge joins parts of one kind")
    first = _settings(infos[0])
    for r, info in zip(runs[1:], infos[1:]):
        diff = _differences(first, _settings(info))
        if diff:
            raise InvMMInputError(f"{r} was made differently from {runs[0]}: {'; '.join(diff)}. Only parts of one "
                                  "audit (same model, settings and dataset) can be merged")
    of = {info["shard"]["of"] for info in infos}
    if len(of) > 1:
        raise InvMMInputError(f"the runs split the dataset into different numbers of parts ({sorted(of)}): "
                              + ", ".join(f"{r} is {i['shard']['index']}/{i['shard']['of']}"
                                          for r, i in zip(runs, infos)))
    seen: dict[int, Path] = {}
    for r, info in zip(runs, infos):
        index = info["shard"]["index"]
        if index in seen:
            raise InvMMInputError(f"{seen[index]} and {r} are both part {index}/{info['shard']['of']}; each part "
                                  "once")
        seen[index] = r
    if (out / RUN_FILE).exists() or (out / LEDGER_FILE).exists() or (out / SCORES_FILE).exists():
        raise InvMMInputError(f"{out} already holds a run; choose another --out so its results are kept")
    if kind == "scores":
        return _merge_scores(runs, infos, out, sorted(seen))

    ledgers = [Ledger(r).read() for r in runs]
    owner: dict[str, Path] = {}
    for r, records in zip(runs, ledgers):
        for rec in records:
            if owner.setdefault(rec.id, r) != r:
                raise InvMMInputError(f"the image {rec.id!r} is in both {owner[rec.id]} and {r}: the parts overlap")
    screens = [Ledger(r / SCREEN_DIR, SCORES_FILE, ScoreRecord).read() for r in runs]
    screen = infos[0].get("screen")
    kept = None
    if screen and screen.get("keep_top"):
        merged_screen = [rec for part in screens for rec in part]
        kept = select_kept(merged_screen, screen["settings"]["higher_is_better"], screen["keep_top"])

    with RunLock(out):
        records = [rec for part in ledgers for rec in part]
        inside = [rec for rec in records if kept is None or rec.id in kept]
        beyond = [rec for rec in records if kept is not None and rec.id not in kept]
        info = _merged_info(runs, infos, inside, kept)
        _write_lines(out / LEDGER_FILE, [rec.to_json() for rec in inside])
        if beyond:
            _write_lines(out / BEYOND_FILE, [rec.to_json() for rec in beyond])
        for r, part, part_info in zip(runs, ledgers, infos):
            stems = artifact_stems(r, part_info, ((rec.id, rec.repeat) for rec in part))  # older parts: older names
            for rec in part:
                if (kept is None or rec.id in kept) and stems[(rec.id, rec.repeat)] is not None:
                    copy_artifacts(r, out, rec.id, rec.repeat, src_stem=stems[(rec.id, rec.repeat)])
        if any(screens):
            _merge_screen(runs, out, screens)
        atomic_write_json(out / RUN_FILE, info)  # last: a run.json means the merged folder is complete
    return MergeSummary(out, sorted(seen), next(iter(of)), len(inside), len(beyond), len({r.id for r in inside}))


def _merge_scores(runs: list[Path], infos: list[dict], out: Path, parts: list[int]) -> MergeSummary:
    ledgers = [Ledger(r, SCORES_FILE, ScoreRecord).read() for r in runs]
    owner: dict[str, Path] = {}
    for r, records in zip(runs, ledgers):
        for rec in records:
            if owner.setdefault(rec.id, r) != r:
                raise InvMMInputError(f"the image {rec.id!r} is in both {owner[rec.id]} and {r}: the parts overlap")
    with RunLock(out):
        info = _common_info(runs, infos)
        info["dataset"] = [d for i in infos for d in i.get("dataset", [])]
        records = [rec.to_json() for part in ledgers for rec in part]
        _write_lines(out / SCORES_FILE, records)
        atomic_write_json(out / RUN_FILE, info)
    return MergeSummary(out, parts, infos[0]["shard"]["of"], len(records), 0, len(owner))


def _common_info(runs: list[Path], infos: list[dict]) -> dict:
    info = json.loads(json.dumps(infos[0]))
    info.pop("shard")
    info.pop("resumed", None)
    parts = {i["shard"]["index"] for i in infos}
    info["parts_merged"] = {"parts": sorted(parts), "of": infos[0]["shard"]["of"],
                            "complete": len(parts) == infos[0]["shard"]["of"]}
    info["merged_from"] = [{"run": str(r), "shard": i["shard"], "created": i.get("created"),
                            "images": i["dataset"].get("n") if isinstance(i["dataset"], dict) else len(i["dataset"])}
                           for r, i in zip(runs, infos)]
    return info


def _merged_info(runs: list[Path], infos: list[dict], inside: list, kept: set | None) -> dict:
    info = _common_info(runs, infos)
    info["sessions"] = [s for i in infos for s in i.get("sessions", [])]
    info["artifact_names"] = ARTIFACT_NAMES  # the merged folder's files are written under the current names
    info["dataset"]["n"] = len({rec.id for rec in inside})
    info["dataset"].pop("hash", None)  # of one part's images; the whole's ids are in dataset.whole
    info["dataset"]["source"] = [i["dataset"].get("source") for i in infos]  # skipped rows, problems: the whole's
    if info.get("mask") and not info["mask"].get("path"):  # a manifest's masks: the whole's count, no one hash
        info["mask"] = {"source": info["mask"]["source"], "n": sum(i["mask"]["n"] for i in infos)}
    if info.get("auto_mask"):
        for k in ("masked", "kept_whole"):
            info["auto_mask"][k] = sum(i["auto_mask"][k] for i in infos)
    if info.get("screen"):
        info["screen"]["of"] = sum(i["screen"]["of"] for i in infos)
        info["screen"]["kept"] = len(kept) if kept is not None else sum(i["screen"]["kept"] for i in infos)
    return info


def _write_lines(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows).encode())


def _merge_screen(runs: list[Path], out: Path, screens: list[list]) -> None:
    infos = [read_run_info(r / SCREEN_DIR, "screen") for r in runs]
    info = json.loads(json.dumps(infos[0]))
    info["dataset"] = [d for i in infos for d in i.get("dataset", [])]
    info.pop("resumed", None)
    _write_lines(out / SCREEN_DIR / SCORES_FILE, [rec.to_json() for part in screens for rec in part])
    atomic_write_json(out / SCREEN_DIR / RUN_FILE, info)
