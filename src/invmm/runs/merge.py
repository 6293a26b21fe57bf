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
from invmm.data.split import part_of
from invmm.errors import InvMMInputError
from invmm.runs.design import merge as merge_design
from invmm.runs.scores import SCORES_FILE, ScoreRecord
from invmm.runs.screen import SCREEN_DIR, select_kept
from invmm.store.artifacts import ARTIFACT_NAMES, artifact_stems, copy_artifacts
from invmm.store.files import LEDGER_FILE, RUN_FILE, Ledger, atomic_write_bytes, atomic_write_json, read_run_info
from invmm.store.folder import model_settings, settings_diff
from invmm.store.lock import RunLock

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
                "seed": info.get("seed"), "scorers": info.get("scorers"),
                "dataset": info.get("dataset_whole")}
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
            # one --mask file for all, by content (the same file may lie elsewhere on each machine); a manifest's
            # masks are part of the whole dataset (split.whole hashes them), so a part whose own rows have none
            # still merges with the others
            "mask": _option_mask(info.get("mask")),
            "automatic masks": (info.get("auto_mask") or {}).get("threshold"),
            # the design: the same population, seed and sample size (each part holds its own candidates)
            "design": {k: (info.get("design") or {}).get(k) for k in ("population", "population_ids_sha256", "seed")}
            | {"sample": ((info.get("design") or {}).get("sample") or {}).get("m"),
               "census": ((info.get("design") or {}).get("census") or {}).get("kind")}}


def _option_mask(mask: dict | None) -> dict | None:
    if not mask or mask.get("source") != "option":
        return None
    return {"--mask": f"a file with sha256 {mask['sha256'][:12]}"}


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                out.append(f"{key} ({'; '.join(settings_diff(a[key], b[key]))})")
            else:
                out.append(key)
    return out


def merge_runs(runs: list[str | Path], out: str | Path, *, allow_incomplete: bool = False) -> MergeSummary:
    """Join the parts `runs` into the new run folder `out`. A part with fewer results than its share of the
    dataset (interrupted) is refused, unless `allow_incomplete`: then the merged run.json and its report say
    which parts lack how many."""
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
        ledgers = [Ledger(r, SCORES_FILE, ScoreRecord).read() for r in runs]
        missing = [_missing_scores(i, part) for i, part in zip(infos, ledgers)]
    else:
        ledgers = [Ledger(r).read() for r in runs]
        missing = [_missing_inversions(i, part) for i, part in zip(infos, ledgers)]
    incomplete = [{"run": str(r), "part": i["shard"]["index"], "missing": m}
                  for r, i, m in zip(runs, infos, missing) if m]
    if incomplete and not allow_incomplete:
        raise InvMMInputError("; ".join(f"{x['run']} (part {x['part']}) is incomplete: it lacks {x['missing']} of "
                                        "its results (interrupted?)" for x in incomplete)
                              + ". Resume each such part (rerun its command) and merge again, or merge it as it "
                                "is with --allow-incomplete (the merged run then says which parts lack what)")
    if kind == "scores":
        return _merge_scores(runs, infos, ledgers, out, sorted(seen), incomplete)

    owner: dict[str, Path] = {}
    for r, records in zip(runs, ledgers):
        for rec in records:
            if owner.setdefault(rec.id, r) != r:
                raise InvMMInputError(f"the image {rec.id!r} is in both {owner[rec.id]} and {r}: the parts overlap")
    # Each part's screen, its own images only: a part folder once resumed with another --shard screened that
    # part's images into it before the resume was refused (runs/audit.py now refuses first).
    screens = [[rec for rec in Ledger(r / SCREEN_DIR, SCORES_FILE, ScoreRecord).read()
                if part_of(rec.id, i["shard"]["of"]) == i["shard"]["index"]] for r, i in zip(runs, infos)]
    screen = infos[0].get("screen")
    kept = None
    if screen and screen.get("keep_top"):
        merged_screen = [rec for part in screens for rec in part]
        kept = select_kept(merged_screen, screen["settings"]["higher_is_better"], screen["keep_top"])

    records = [rec for part in ledgers for rec in part]
    design = merge_design([i.get("design") for i in infos], kept, {rec.id for rec in records}) \
        if infos[0].get("design") else None
    wanted = None if kept is None else set(kept)
    if design and design.get("sample"):  # the whole's census and its sample; the other candidates go beyond
        wanted = (wanted or set()) | set(design["sample"]["ids"])
    with RunLock(out):
        inside = [rec for rec in records if wanted is None or rec.id in wanted]
        beyond = [rec for rec in records if wanted is not None and rec.id not in wanted]
        info = _merged_info(runs, infos, inside, kept, incomplete)
        if design is not None:
            info["design"] = design
        _write_lines(out / LEDGER_FILE, [rec.to_json() for rec in inside])
        if beyond:
            _write_lines(out / BEYOND_FILE, [rec.to_json() for rec in beyond])
        for r, part, part_info in zip(runs, ledgers, infos):
            stems = artifact_stems(r, part_info, ((rec.id, rec.repeat) for rec in part))  # older parts: older names
            for rec in part:
                if (wanted is None or rec.id in wanted) and stems[(rec.id, rec.repeat)] is not None:
                    copy_artifacts(r, out, rec.id, rec.repeat, src_stem=stems[(rec.id, rec.repeat)])
        if any(screens):
            _merge_screen(runs, out, screens)
        atomic_write_json(out / RUN_FILE, info)  # last: a run.json means the merged folder is complete
    return MergeSummary(out, sorted(seen), next(iter(of)), len(inside), len(beyond), len({r.id for r in inside}))


def _merge_scores(runs: list[Path], infos: list[dict], ledgers: list[list], out: Path, parts: list[int],
                  incomplete: list[dict]) -> MergeSummary:
    owner: dict[str, Path] = {}
    for r, records in zip(runs, ledgers):
        for rec in records:
            if owner.setdefault(rec.id, r) != r:
                raise InvMMInputError(f"the image {rec.id!r} is in both {owner[rec.id]} and {r}: the parts overlap")
    with RunLock(out):
        info = _common_info(runs, infos, incomplete)
        info["dataset"] = [d for i in infos for d in i.get("dataset", [])]
        records = [rec.to_json() for part in ledgers for rec in part]
        _write_lines(out / SCORES_FILE, records)
        atomic_write_json(out / RUN_FILE, info)
    return MergeSummary(out, parts, infos[0]["shard"]["of"], len(records), 0, len(owner))


def _missing_inversions(info: dict, records: list) -> int:
    """How many inversions an audit part lacks: its images (those it inverts: after the screen; with --mask auto
    also those kept whole) times its repeats, less the (image, repeat) pairs its ledger holds."""
    resumed = [r for r in info.get("resumed", []) if "n" in r]
    n = resumed[-1]["n"] if resumed else info["dataset"]["n"]
    n += (info.get("auto_mask") or {}).get("kept_whole", 0)
    return max(0, n * info.get("repeats", 1) - len({(r.id, r.repeat) for r in records}))


def _missing_scores(info: dict, records: list) -> int:
    """How many (image, scorer) scores an evaluate part lacks."""
    done = {(r.id, r.scorer) for r in records}
    return sum((d["id"], name) not in done for d in info.get("dataset", []) for name in info.get("scorers", {}))


def _common_info(runs: list[Path], infos: list[dict], incomplete: list[dict]) -> dict:
    info = json.loads(json.dumps(infos[0]))
    info.pop("shard")
    info.pop("resumed", None)
    parts = {i["shard"]["index"] for i in infos}
    info["parts_merged"] = {"parts": sorted(parts), "of": infos[0]["shard"]["of"],
                            "complete": len(parts) == infos[0]["shard"]["of"] and not incomplete,
                            **({"incomplete_parts": incomplete} if incomplete else {})}
    info["merged_from"] = [{"run": str(r), "shard": i["shard"], "created": i.get("created"),
                            "images": i["dataset"].get("n") if isinstance(i["dataset"], dict) else len(i["dataset"])}
                           for r, i in zip(runs, infos)]
    return info


def _merged_info(runs: list[Path], infos: list[dict], inside: list, kept: set | None, incomplete: list[dict]) -> dict:
    info = _common_info(runs, infos, incomplete)
    info["sessions"] = [s for i in infos for s in i.get("sessions", [])]
    info["artifact_names"] = ARTIFACT_NAMES  # the merged folder's files are written under the current names
    info["dataset"]["n"] = len({rec.id for rec in inside})
    lacking = sorted(kept - {rec.id for rec in inside}) if kept is not None else []
    if lacking:  # only with --allow-incomplete: the whole's top K holds images an interrupted part never inverted
        info["parts_merged"]["kept_without_results"] = lacking
    info["dataset"].pop("hash", None)  # of one part's images; the whole's ids are in dataset.whole
    info["dataset"]["source"] = [i["dataset"].get("source") for i in infos]  # skipped rows, problems: the whole's
    masks = [i["mask"] for i in infos if i.get("mask")]
    if masks and not masks[0].get("path"):  # a manifest's masks: the whole's count, no one hash
        info["mask"] = {"source": masks[0]["source"], "n": sum(m["n"] for m in masks)}
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
    mine = {rec.id for part in screens for rec in part}
    info["dataset"] = [d for i in infos for d in i.get("dataset", []) if d["id"] in mine]
    info.pop("resumed", None)
    _write_lines(out / SCREEN_DIR / SCORES_FILE, [rec.to_json() for part in screens for rec in part])
    atomic_write_json(out / SCREEN_DIR / RUN_FILE, info)
