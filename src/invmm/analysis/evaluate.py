"""Evaluation of the scores in a run folder: per scorer AUC and TPR at low FPR with bootstrap intervals, a
ROC figure, score histograms per label, and a summary table (CSV and text). Computes no score itself.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from invmm.analysis.metrics import bootstrap_intervals, oriented, roc_metrics
from invmm.analysis.plots import histograms_png, roc_png
from invmm.errors import InvMMInputError
from invmm.runs.scores import read_run, read_scores

POSITIVE_NAMES = ("member", "members", "memorized", "duplicated", "positive", "train", "1", "true", "yes")
METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")


@dataclass
class Comparison:
    positive: list[str]
    negative: list[str]

    @property
    def name(self) -> str:
        return f"{'+'.join(self.positive)}-vs-{'+'.join(self.negative)}"


def choose_labels(labels: list[str], positive: list[str] | None, negative: list[str] | None) -> Comparison:
    present = sorted(set(labels))
    if len(present) < 2:
        raise InvMMInputError(f"evaluation needs two labels; the scored images have {present or 'none'}")
    if not positive:
        guess = [lab for lab in present if lab.lower() in POSITIVE_NAMES]
        if len(present) != 2 or len(guess) != 1:
            raise InvMMInputError(f"say which label is positive (member / memorized) with --positive; labels: "
                                  f"{', '.join(present)}")
        positive = guess
    negative = negative or [lab for lab in present if lab not in positive]
    unknown = [lab for lab in [*positive, *negative] if lab not in present]
    if unknown:
        raise InvMMInputError(f"label(s) {', '.join(unknown)} not among the scored images' labels: "
                              f"{', '.join(present)}")
    if set(positive) & set(negative):
        raise InvMMInputError(f"label(s) {', '.join(set(positive) & set(negative))} are both positive and negative")
    return Comparison(list(positive), list(negative))


def evaluate_run(run_dir: str | Path, *, positive: list[str] | None = None, negative: list[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, out: Path | None = None) -> tuple[list[dict], Path]:
    """Summary rows (one per scorer) and the folder the CSV and figures were written to."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    records = read_scores(run_dir)
    if not records:
        raise InvMMInputError(f"{run_dir}: no scores yet; give --model, --data and --scorers to compute them")
    cmp = choose_labels([r.label for r in records if r.label is not None], positive, negative)
    out = Path(out) if out else run_dir / "evaluation" / cmp.name
    out.mkdir(parents=True, exist_ok=True)

    scorers = [name for name in info.get("scorers", {}) if any(r.scorer == name for r in records)]
    rows, curves, hist, directions = [], {}, {}, {}
    for name in scorers:
        higher = bool(info["scorers"][name].get("higher_is_better"))
        directions[name] = "higher = member/memorized" if higher else "lower = member/memorized"
        mine = [r for r in records if r.scorer == name and r.label in cmp.positive + cmp.negative]
        usable = [r for r in mine if r.status == "ok" and not math.isnan(r.score)]
        y = np.array([1 if r.label in cmp.positive else 0 for r in usable])
        s = np.array([r.score for r in usable])
        hist[name] = {lab: [r.score for r in usable if r.label == lab] for lab in cmp.positive + cmp.negative}
        seconds = [r.seconds for r in mine if r.seconds is not None]
        row = {"scorer": name, "direction": "higher" if higher else "lower",
               "n_positive": int(y.sum()), "n_negative": int(len(y) - y.sum()),
               "n_missing": len(mine) - len(usable),
               "n_inf": int(np.isinf(s).sum()),
               "seconds_per_image": round(statistics.mean(seconds), 4) if seconds else None}
        if len(set(y.tolist())) < 2:
            row.update({m: None for m in METRICS})
            rows.append(row)
            continue
        point = roc_metrics(y, s, higher_is_better=higher)
        ci = bootstrap_intervals(y, s, higher_is_better=higher, n_boot=n_boot, seed=seed)
        for m in METRICS:
            row[m] = point[m]
            row[f"{m}_lo"], row[f"{m}_hi"] = ci.get(m, [None, None])
        fpr, tpr, _ = roc_curve(y, oriented(s, higher))
        curves[name] = (fpr, tpr, point["auc"])
        rows.append(row)

    title = f"{' + '.join(cmp.positive)} (positive) vs {' + '.join(cmp.negative)}"
    if curves:
        roc_png(curves, out / "roc.png", title)
    histograms_png(hist, out / "histograms.png", title, directions)
    write_summary_csv(rows, out / "summary.csv")
    (out / "summary.txt").write_text(format_summary(rows, title) + "\n", encoding="utf-8")
    return rows, out


CSV_COLUMNS = ["scorer", "direction", "n_positive", "n_negative", "n_missing", "n_inf", "auc", "auc_lo", "auc_hi",
               "tpr@1%fpr", "tpr@1%fpr_lo", "tpr@1%fpr_hi", "tpr@0.1%fpr", "tpr@0.1%fpr_lo", "tpr@0.1%fpr_hi",
               "seconds_per_image"]


def write_summary_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _ci(row: dict, m: str) -> str:
    if row.get(m) is None:
        return "-"
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    return f"{row[m]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{row[m]:.3f}"


def format_summary(rows: list[dict], title: str) -> str:
    table = [("scorer", "n+/n-", "AUC [95% CI]", "TPR@1%FPR [95% CI]", "TPR@0.1%FPR [95% CI]", "s/image")]
    for r in rows:
        sec = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3g}"
        table.append((r["scorer"], f"{r['n_positive']}/{r['n_negative']}", _ci(r, "auc"), _ci(r, "tpr@1%fpr"),
                      _ci(r, "tpr@0.1%fpr"), sec))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(2, "  ".join("-" * w for w in widths))
    missing = [f"{r['scorer']}: {r['n_missing']} image(s) without a score" for r in rows if r["n_missing"]]
    return "\n".join(lines + missing)
