"""Did the mitigation work? The three numbers of `invmm mitigation-eval`, per trigger image and mitigation, and their
summary per mitigation (runs/mitigation_eval.py computes them):

1. plain re-trigger: G generations from the training caption under the mitigated sampler, as MemBench judges a
   mitigation (its max similarity, the mean of the top 3, the share at or above the copy threshold);
2. adversarial re-trigger: InvMM against the mitigated sampler (with the known caption; and with the conditioning
   inverted where the family allows): reproduced or not, and the score;
3. side effects: on other captions, the similarity of mitigated to unmitigated generations from the same noise, and
   the share the mitigation changes beyond a threshold.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from scipy.stats import binomtest

COLUMNS = ["id", "caption", "mitigation", "plain_max_similarity", "plain_top3_mean", "plain_share",
           "adversarial_reproduced", "adversarial_score", "adversarial_steps", "inverted_reproduced",
           "inverted_score"]
SIDE_COLUMNS = ["id", "caption", "mitigation", "mean_similarity", "min_similarity", "share_changed"]


def plain_numbers(similarities: list[float], beta: float) -> dict:
    """MemBench's numbers for one trigger: the largest similarity of its generations to the image, the mean of the
    three largest, and the share at or above the copy threshold."""
    ordered = sorted(similarities, reverse=True)
    return {"plain_max_similarity": ordered[0], "plain_top3_mean": statistics.fmean(ordered[:3]),
            "plain_share": sum(s >= beta for s in ordered) / len(ordered)}


def side_numbers(similarities: list[float], threshold: float) -> dict:
    """One other caption: how like its unmitigated generations the mitigated ones are (same noise), and the share
    changed beyond the threshold (similarity below it)."""
    return {"mean_similarity": statistics.fmean(similarities), "min_similarity": min(similarities),
            "share_changed": sum(s < threshold for s in similarities) / len(similarities)}


def exact_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Clopper-Pearson: the share of trigger images like these that the attack reproduces (a binomial view of the
    images as a sample of triggers)."""
    if n == 0:
        return None, None
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return ci.low, ci.high


def summarise(rows: list[dict], side: list[dict], beta: float) -> list[dict]:
    """One summary row per mitigation, in the order the mitigations first appear."""
    out = []
    for name in dict.fromkeys(r["mitigation"] for r in rows):
        mine = [r for r in rows if r["mitigation"] == name]
        n = len(mine)
        retriggered = sum(r["plain_max_similarity"] >= beta for r in mine)
        row = {"mitigation": name, "images": n, "plain_retriggered": retriggered,
               "plain_share_mean": statistics.fmean(r["plain_share"] for r in mine),
               "plain_max_mean": statistics.fmean(r["plain_max_similarity"] for r in mine)}
        for mode in ("adversarial", "inverted"):
            done = [r for r in mine if r[f"{mode}_reproduced"] is not None]
            k = sum(bool(r[f"{mode}_reproduced"]) for r in done)
            lo, hi = exact_interval(k, len(done))
            scores = [r[f"{mode}_score"] for r in done if r[f"{mode}_reproduced"]]
            row.update({f"{mode}_reproduced": k, f"{mode}_n": len(done), f"{mode}_lower": lo, f"{mode}_upper": hi,
                        f"{mode}_median_score": statistics.median(scores) if scores else None})
        theirs = [s for s in side if s["mitigation"] == name]
        row["side_mean_similarity"] = statistics.fmean(s["mean_similarity"] for s in theirs) if theirs else None
        row["side_share_changed"] = statistics.fmean(s["share_changed"] for s in theirs) if theirs else None
        out.append(row)
    return out


def write_csv(rows: list[dict], columns: list[str], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})
    return path


def _cell(v):
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return "" if v is None else v


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{digits}f}"


def format_summary(summary: list[dict], beta: float, generations: int) -> str:
    head = ["mitigation", "plain re-triggered", "plain share", "adversarial (known caption)", "95% interval",
            "median score", "adversarial (inverted)", "side: similarity", "side: changed"]
    table = [head]
    for r in summary:
        inverted = "-" if not r["inverted_n"] else f"{r['inverted_reproduced']}/{r['inverted_n']}"
        interval = "-" if r["adversarial_lower"] is None else \
            f"[{r['adversarial_lower']:.2f}, {r['adversarial_upper']:.2f}]"
        table.append([r["mitigation"], f"{r['plain_retriggered']}/{r['images']}", _num(r["plain_share_mean"]),
                      f"{r['adversarial_reproduced']}/{r['adversarial_n']}" if r["adversarial_n"] else "-",
                      interval, _num(r["adversarial_median_score"]), inverted, _num(r["side_mean_similarity"]),
                      _num(r["side_share_changed"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [f"Per mitigation: trigger images re-triggered by {generations} plain generations from their caption "
             f"(max similarity >= {beta}), the mean share of copies among them, the images InvMM still reproduces "
             "through the mitigated sampler, and the side effects on other captions"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)
