"""Memorization across a training run's checkpoints: when each image started to be reproduced, whether it stayed,
and the last checkpoint a policy allows (`invmm track`, `invmm report OUT`). Pure functions over
per-checkpoint outcomes, and track.json made from the OUT/step-N run folders; the counts' bounds come from each
checkpoint's own assessment (analysis/assess.py)."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from invmm.analysis.assess import assess_run
from invmm.analysis.evaluate import choose_labels
from invmm.analysis.metrics import roc_metrics
from invmm.analysis.population import CONFIDENCE, Policy
from invmm.errors import InvMMInputError
from invmm.runs.scores import read_scores
from invmm.store.files import RUN_FILE, read_run_info


@dataclass(frozen=True)
class CheckpointOutcome:
    step: int
    reproduced: frozenset[str]  # the images reproduced within the budget at this checkpoint
    measured: frozenset[str]  # the images with an outcome at this checkpoint (reproduced or not)
    upper: float | None = None  # the one-sided upper bound on the count, from the checkpoint's assessment
    population: int | None = None  # the number of images that bound is of


def onsets(outcomes: list[CheckpointOutcome]) -> dict[str, dict]:
    """Per image: `onset`, the first checkpoint step at which it is reproduced (None: never), and `stays`, whether
    every later checkpoint that measured it reproduces it too (None when never reproduced). Checkpoints are taken in
    step order; one that did not measure an image says nothing about it."""
    ordered = sorted(outcomes, key=lambda o: o.step)
    images = sorted(set().union(*(o.measured for o in ordered))) if ordered else []
    out = {}
    for image in images:
        seen = [(o.step, image in o.reproduced) for o in ordered if image in o.measured]
        onset = next((step for step, hit in seen if hit), None)
        stays = None if onset is None else all(hit for step, hit in seen if step >= onset)
        out[image] = {"onset": onset, "stays": stays, "reproduced_at": [step for step, hit in seen if hit]}
    return out


def last_safe(outcomes: list[CheckpointOutcome], max_rate: float) -> int | None:
    """The last checkpoint of the run's first stretch whose upper bound on the count stays within max_rate of its
    population: training up to it kept the policy at every checkpoint; None when the first checkpoint already breaks
    it (or has no bound)."""
    safe = None
    for o in sorted(outcomes, key=lambda o: o.step):
        if o.upper is None or not o.population or o.upper > max_rate * o.population:
            break
        safe = o.step
    return safe


TRACK_FILE = "track.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def step_folders(out: str | Path) -> list[tuple[int, Path]]:
    """OUT/step-N run folders (with a run.json), by step."""
    out = Path(out)
    if not out.is_dir():
        raise InvMMInputError(f"{out}: no such folder; give the --out folder of `invmm track`")
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := STEP_DIR.match(p.name)) and (p / RUN_FILE).is_file()]
    return sorted(found)


def summarise_track(out: str | Path, *, policy: Policy | None = None, score_below: float | None = None,
                    positive: list[str] | None = None, negative: list[str] | None = None,
                    errors: dict[int, str] | None = None) -> dict:
    """track.json's content from the OUT/step-N run folders: per checkpoint its assessment (analysis/assess.py: the
    count reproduced of the checkpoint's design, its exact bounds and, under `policy`, the decision), the median
    score of what it reproduced and its screen's AUC where the images carry member/non-member labels; per image its
    onset; the last safe checkpoint under `policy`. `errors`: checkpoints that could not be audited (step: why)."""
    folders = step_folders(out)
    if not folders and not errors:
        raise InvMMInputError(f"{out}: no step-N run folders; run `invmm track TRAINING_DIR DATA --out {out}` first")
    confidence = policy.confidence if policy else CONFIDENCE
    rows, outcomes, scores, notes = [], [], {}, []
    first_config = None
    for step, run_dir in folders:
        info = read_run_info(run_dir, "audit run")
        a = assess_run(run_dir, policy, score_below=score_below, confidence=confidence)
        ok = {i: s for i, s in a.summaries.items() if s.status == "ok"}
        found = set(a.found_ids)
        for s in ok.values():
            scores.setdefault(s.id, {})[step] = s.score if s.id in found else None
        paper = [ok[i].score for i in found if i in ok and math.isfinite(ok[i].score)]
        refined = [ok[i].refined_score for i in found if i in ok and ok[i].refined_score is not None
                   and math.isfinite(ok[i].refined_score)]
        c, e = a.counts, a.estimate
        config = {k: v for k, v in (info.get("config") or {}).items() if k != "seed"} | {"seed": info.get("seed")}
        if first_config is None:
            first_config = config
        elif config != first_config:
            notes.append(f"step {step} was audited with other settings than step {folders[0][0]}: its counts are "
                         "not comparable with theirs")
        track = info.get("track") or {}
        rows.append({
            "step": step, "run": str(run_dir), "checkpoint": track.get("checkpoint"), "kind": track.get("kind"),
            "model": info.get("model_path"), "reproduced": len(found), "n": c.census + c.drawn,
            "unknown": c.census_unknown + c.unknown, "population": c.population,
            "lower": e.two_sided[0], "upper": e.two_sided[1], "upper_one_sided": e.upper,
            "estimate": None if math.isnan(e.count) else e.count, "confidence": confidence,
            "median_score": statistics.median(paper) if paper else None,
            "median_refined": statistics.median(refined) if refined else None,
            "stopped_early": sum(1 for s in ok.values() if (s.early_stop or {}).get("stopped")),
            "screen": screen_auc(run_dir, info, positive, negative),
            "decision": a.decision, "found": sorted(found)})
        outcomes.append(CheckpointOutcome(step, frozenset(found), frozenset(ok), e.upper, c.population))
    per_image = onsets(outcomes)
    for image, entry in per_image.items():
        entry["scores"] = {str(step): _json_score(v) for step, v in sorted(scores.get(image, {}).items())}
    safe = last_safe(outcomes, policy.max_rate) if policy else None
    first = next((r["step"] for r in rows if r["reproduced"]), None)
    return {"out": str(out), "quantity": a.quantity if folders else None,
            "labels": {"positive": positive, "negative": negative}, "score_below": score_below,
            "policy": policy.to_json() if policy else None, "last_safe": safe,
            "last_safe_why": safe_reason(rows, safe, policy) if policy else None,
            "first_reproducing": first, "checkpoints": rows,
            "failed": [{"step": s, "error": why} for s, why in sorted((errors or {}).items())],
            "images": per_image, "notes": notes}


def safe_reason(rows: list[dict], safe: int | None, policy: Policy) -> str:
    """Why the last safe checkpoint is where it is: the checkpoint after it, and what it breaks."""
    if not rows:
        return "no checkpoint was audited"
    later = [r for r in rows if safe is None or r["step"] > safe]
    if not later:
        return "every checkpoint audited keeps the policy"
    r = later[0]
    if r["upper_one_sided"] is None:
        what = (f"step {r['step']} has no upper bound: only the screen's top images were inverted; add a random "
                "sample (--sample M)")
    else:
        what = (f"step {r['step']} breaks it: up to {r['upper_one_sided']} of {r['population']} images, more than "
                f"{policy.max_rate * r['population']:g}")
    return what


def _json_score(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def screen_auc(run_dir: Path, info: dict, positive, negative) -> dict | None:
    """The screen scorer's member vs non-member AUC at this checkpoint, over every screened image with a label; None
    without a screen, and the reason instead of an AUC where the labels do not say who is a member."""
    screen = info.get("screen")
    if not screen:
        return None
    records = [r for r in read_scores(run_dir / screen.get("folder", "screen")) if r.status == "ok"
               and not math.isnan(r.score)]
    name = screen.get("scorer")
    higher = bool((screen.get("settings") or {}).get("higher_is_better"))
    labels = [r.label for r in records if r.label is not None]
    if negative and not positive:  # the non-members named: every other label is a member (e.g. duplication levels)
        positive = sorted({lab for lab in labels if lab not in negative}) or None
    try:
        cmp = choose_labels(labels, positive, negative)
    except InvMMInputError as exc:
        return {"scorer": name, "auc": None, "why": str(exc)}
    used = [r for r in records if r.label in cmp.positive + cmp.negative]
    y = [1 if r.label in cmp.positive else 0 for r in used]
    if len(set(y)) < 2:
        return {"scorer": name, "auc": None, "why": "one side of the comparison has no scored image"}
    auc = roc_metrics(y, [r.score for r in used], higher_is_better=higher)["auc"]
    return {"scorer": name, "auc": auc, "positive": cmp.positive, "negative": cmp.negative,
            "n_positive": sum(y), "n_negative": len(y) - sum(y)}


def read_track(out: str | Path) -> dict | None:
    """OUT/track.json as `invmm track` last wrote it, or None."""
    path = Path(out) / TRACK_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_track(out: str | Path, summary: dict) -> Path:
    path = Path(out) / TRACK_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return path


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _interval(row: dict) -> str:
    return f"[{row['lower']}, {'unbounded' if row['upper'] is None else row['upper']}]"


def format_track(summary: dict, show: int = 30) -> str:
    rows = summary["checkpoints"]
    lines = []
    if rows:
        conf = f"{100 * rows[0]['confidence']:g}%"
        lines.append(f"Memorization over training: images {summary['quantity']}, of {rows[0]['population']:,} "
                     f"(the count's {conf} exact interval)")
        screen = next((r["screen"]["scorer"] for r in rows if r["screen"]), None)
        head = ["step", "checkpoint", "reproduced", f"{conf} interval", "median score", "median refined"]
        head += [f"{screen} AUC"] if screen else []
        head += ["stopped early"] + (["decision"] if summary["policy"] else [])
        table = [head]
        for r in rows:
            cells = [str(r["step"]), r["kind"] or "-", f"{r['reproduced']}/{r['n']}" +
                     (f" (+{r['unknown']} unknown)" if r["unknown"] else ""), _interval(r), _num(r["median_score"]),
                     _num(r["median_refined"])]
            if screen:
                cells.append(_num((r["screen"] or {}).get("auc")))
            cells.append(str(r["stopped_early"]))
            if summary["policy"]:
                cells.append(r["decision"] or "-")
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    for f in summary["failed"]:
        lines.append(f"step {f['step']}: not audited: {f['error']}")
    if summary["policy"]:
        p = summary["policy"]
        safe = summary["last_safe"]
        lines.append("")
        lines.append(f"last safe checkpoint (the upper bound within {100 * p['max_rate']:g}% at every checkpoint up to "
                     f"it, {100 * p['confidence']:g}% one-sided): {'none' if safe is None else f'step {safe}'} "
                     f"({summary['last_safe_why']})")
    lines += ["", *format_onsets(summary, show)]
    lines += [f"note: {n}" for n in summary["notes"]]
    return "\n".join(lines)


def format_onsets(summary: dict, show: int = 30) -> list[str]:
    images = summary["images"]
    hit = sorted((i for i, e in images.items() if e["onset"] is not None), key=lambda i: (images[i]["onset"], i))
    never = len(images) - len(hit)
    if not hit:
        return [f"no image is reproduced at any checkpoint ({never} images)"]
    steps = [str(r["step"]) for r in summary["checkpoints"]]
    table = [["image", "onset", "stays", *steps]]
    for i in hit[:show]:
        e = images[i]
        table.append([i, str(e["onset"]), "yes" if e["stays"] else "no",
                      *[("-" if s not in e["scores"] else "inf" if e["scores"][s] is None else f"{e['scores'][s]:.3f}")
                        for s in steps]])
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    lines = ["Onsets: the first checkpoint from which each image is reproduced (its score at each; inf: not "
             "reproduced, -: not measured)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    if len(hit) > show:
        lines.append(f"... and {len(hit) - show} more reproduced images (all in track.json)")
    lines.append(f"never reproduced: {never} image(s)")
    return lines
