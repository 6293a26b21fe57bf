"""Base model vs fine-tune: what the fine-tune added, image by image.

Two runs (measure or audit) over the same images with the same InvMM settings, one on the base model and
one on the fine-tune (a LoRA, or a fine-tuned checkpoint). Per image: both scores (medians with their
intervals when the runs have repeats), the change, and the verdict. Sorted by what the fine-tune added:
first the images it made reproducible (inf on the base, finite on the fine-tune; most memorized first),
then those it made more memorized (largest drop first), then the rest.
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path

from invmm.config import stored_config
from invmm.errors import InvMMInputError
from invmm.records import ImageSummary, summarise
from invmm.store.files import RUN_FILE, Ledger
from invmm.store.folder import MODEL_SETTINGS, read_run_info, settings_diff

# What the fine-tune did to an image, in the order the table shows them.
VERDICTS = ("made reproducible", "more memorized", "unchanged", "less memorized", "no longer reproduced",
            "reproduced by neither", "measured on other regions", "error")


@dataclass
class Row:
    id: str
    base: ImageSummary
    tuned: ImageSummary
    verdict: str

    @property
    def change(self) -> float:
        """Fine-tune score minus base score: negative = more memorized; -inf = made reproducible."""
        if self.verdict in ("error", "measured on other regions"):
            return math.nan
        a, b = self.base.score, self.tuned.score
        if math.isinf(a) and math.isinf(b):
            return 0.0
        return b - a


@dataclass
class Comparison:
    base_dir: Path
    tuned_dir: Path
    rows: list[Row]
    only_base: list[str]
    only_tuned: list[str]

    def counts(self) -> dict:
        return {v: sum(r.verdict == v for r in self.rows) for v in VERDICTS}


def verdict(base: ImageSummary, tuned: ImageSummary) -> str:
    if base.status != "ok" or tuned.status != "ok":
        return "error"
    if base.region != tuned.region:  # whole vs mask, or two masks: two scales, no change to read
        return "measured on other regions"
    a, b = base.score, tuned.score
    if math.isinf(a) and math.isinf(b):
        return "reproduced by neither"
    if math.isinf(a):
        return "made reproducible"
    if math.isinf(b):
        return "no longer reproduced"
    if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
        return "unchanged"
    return "more memorized" if b < a else "less memorized"


def _sort_key(r: Row):
    rank = VERDICTS.index(r.verdict)
    if r.verdict == "made reproducible":
        return (rank, r.tuned.score, r.id)
    change = r.change
    return (rank, change if math.isfinite(change) else 0.0, r.id)


def compare_runs(base_dir: str | Path, tuned_dir: str | Path, *, by: str = "paper") -> Comparison:
    """The per-image comparison of two runs made with the same settings; refuses runs made differently.
    by="refined" compares the refined scores (records.summarise)."""
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    infos = []
    for d in (base_dir, tuned_dir):
        if not (d / RUN_FILE).exists():
            raise InvMMInputError(f"{d}: no {RUN_FILE}; give two folders written by `invmm audit` or `invmm measure`")
        infos.append(read_run_info(d))
    diff = settings_diff(*(stored_config(info.get("config", {})) for info in infos))
    diff += settings_diff({k: infos[0].get("model", {}).get(k) for k in MODEL_SETTINGS},
                          {k: infos[1].get("model", {}).get(k) for k in MODEL_SETTINGS})
    if diff:
        raise InvMMInputError(f"{base_dir} and {tuned_dir} were made with different settings ({'; '.join(diff)}); "
                              "rerun one with the other's settings so the scores are comparable")
    base = {r.id: r for r in summarise(Ledger(base_dir).read(), by=by)}
    tuned = {r.id: r for r in summarise(Ledger(tuned_dir).read(), by=by)}
    shared = [i for i in tuned if i in base]
    if not shared:
        raise InvMMInputError(f"{base_dir} and {tuned_dir} have no image in common (ids are compared); run both "
                              "over the same images")
    rows = sorted((Row(i, base[i], tuned[i], verdict(base[i], tuned[i])) for i in shared), key=_sort_key)
    return Comparison(base_dir, tuned_dir, rows, sorted(set(base) - set(tuned)), sorted(set(tuned) - set(base)))


def _score(r: ImageSummary) -> str:
    if r.status != "ok":
        return "error"
    text = "inf" if math.isinf(r.score) else f"{r.score:.4f}"
    if r.n_repeats > 1:
        low, high = (("inf" if math.isinf(v) else f"{v:.3f}") if v is not None else "-"
                     for v in (r.score_low, r.score_high))
        text += f" [{low}, {high}] {r.successes or 0}/{r.n_repeats}"
    return text


def _change(r: Row) -> str:
    c = r.change
    if math.isnan(c):
        return "-"
    return "-inf" if c == -math.inf else ("+inf" if c == math.inf else f"{c:+.4f}")


def format_comparison(c: Comparison, limit: int | None = None) -> str:
    head = ("image", "base", "fine-tune", "change", "verdict")
    rows = [head] + [(r.id, _score(r.base), _score(r.tuned), _change(r), r.verdict) for r in c.rows[:limit]]
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    counts = ", ".join(f"{n} {v}" for v, n in c.counts().items() if n)
    lines.append(f"{len(c.rows)} images compared: {counts}")
    other = c.counts()["measured on other regions"]
    if other:
        lines.append(f"{other} image(s) were measured on a mask in one run and on the whole image (or another mask) "
                     "in the other: their scores are on different scales, so no change is given")
    if c.only_base or c.only_tuned:
        lines.append(f"not compared: {len(c.only_base)} only in the base run, {len(c.only_tuned)} only in the "
                     "fine-tune run")
    return "\n".join(lines)


def write_comparison(c: Comparison, out: str | Path) -> dict:
    """compare.csv and compare.html (a self-contained section) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "base_score", "finetune_score", "change", "verdict", "base_successes", "finetune_successes",
                    "n_repeats"])
        for r in c.rows:
            w.writerow([r.id, r.base.score, r.tuned.score, r.change, r.verdict, r.base.successes,
                        r.tuned.successes, r.tuned.n_repeats])
    page = out / "compare.html"
    page.write_text("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>base vs fine-tune</title>"
                    "</head><body>" + comparison_html(c) + "</body></html>", encoding="utf-8")
    return {"csv": out / "compare.csv", "html": page}


def comparison_html(c: Comparison) -> str:
    e = html.escape
    counts = ", ".join(f"{n} {e(v)}" for v, n in c.counts().items() if n)
    rows = "".join(f"<tr><td>{e(r.id)}</td><td>{e(_score(r.base))}</td><td>{e(_score(r.tuned))}</td>"
                   f"<td>{e(_change(r))}</td><td>{e(r.verdict)}</td></tr>" for r in c.rows)
    return (f"<h2>What the fine-tune added</h2><p>Base run <code>{e(str(c.base_dir))}</code>, fine-tune run "
            f"<code>{e(str(c.tuned_dir))}</code>: {len(c.rows)} images compared ({counts}). Lower score = more "
            "memorized; change = fine-tune minus base; sorted by what the fine-tune added.</p>"
            "<table><thead><tr><th>image</th><th>base</th><th>fine-tune</th><th>change</th><th>verdict</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")
