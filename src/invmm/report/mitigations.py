"""`invmm report OUT` for an `invmm mitigation-eval` folder: the summary per mitigation and the table of images x
mitigations x the three numbers, one offline page; every value from the user's data escaped. Each mitigation's
inversions keep their ordinary run folders (OUT/invmm/<mitigation>/<mode>) and reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

from invmm.report.html import CSS, SORT_JS, _e
from invmm.store.files import atomic_write_bytes

RESULT_FILE = "mitigation.json"


def is_mitigation_folder(path: str | Path) -> bool:
    return (Path(path) / RESULT_FILE).is_file()


def _v(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return _e(v)


def _table(head: list[str], rows: list[list[str]]) -> str:
    return ("<table class='sortable'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
            "<tbody>" + "".join("<tr>" + "".join(f"<td data-v='{c}'>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>")


def build_mitigation_report(out_dir: str | Path, report_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir)
    data = json.loads((out_dir / RESULT_FILE).read_text(encoding="utf-8"))
    s = data["settings"]
    report_dir = Path(report_dir) if report_dir else out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>Did the mitigation work? {_e(out_dir)}</h1>",
             f"<p>Each mitigation on the same trigger images, noise and settings: <b>plain re-trigger</b> "
             f"({s['generations']} generations from the training caption at guidance {s['guidance']}, "
             f"{s['sampler_steps']} sampler steps; {_e(s['similarity'])} similarity, a copy at &ge; {s['threshold']}),"
             f" <b>adversarial re-trigger</b> (InvMM through the mitigated sampler, {s['max_steps']:,} steps; "
             f"{_e(', '.join(s['modes']))}) and <b>side effects</b> ({s['side_generations']} generations per other "
             f"caption against the unmitigated ones from the same noise; changed below {s['change_threshold']}). A "
             "mitigation worked against the attack only where the adversarial column drops, not just the plain "
             "one.</p>"]
    head = ["mitigation", "plain re-triggered", "plain share (mean)", "adversarial reproduced", "95% interval",
            "median score", "inverted reproduced", "side: similarity", "side: share changed"]
    rows = []
    for r in data["summary"]:
        lo, hi = r["adversarial_lower"], r["adversarial_upper"]
        rows.append([_e(r["mitigation"]), f"{r['plain_retriggered']}/{r['images']}", _v(r["plain_share_mean"]),
                     f"{r['adversarial_reproduced']}/{r['adversarial_n']}" if r["adversarial_n"] else "-",
                     "-" if lo is None else f"[{lo:.2f}, {hi:.2f}]", _v(r["adversarial_median_score"]),
                     f"{r['inverted_reproduced']}/{r['inverted_n']}" if r["inverted_n"] else "-",
                     _v(r["side_mean_similarity"]), _v(r["side_share_changed"])])
    parts += ["<h2>Per mitigation</h2>", _table(head, rows)]
    head = ["image", "caption", "mitigation", "plain max", "plain top-3", "plain share", "adversarial reproduced",
            "adversarial score", "steps", "inverted reproduced", "inverted score"]
    rows = [[_e(r["id"]), _e(r["caption"]), _e(r["mitigation"]), _v(r["plain_max_similarity"]),
             _v(r["plain_top3_mean"]), _v(r["plain_share"]), _v(r.get("adversarial_reproduced")),
             _v(r.get("adversarial_score")), _v(r.get("adversarial_steps")), _v(r.get("inverted_reproduced")),
             _v(r.get("inverted_score"))] for r in data["rows"]]
    parts += ["<h2>Per image</h2>", "<p class='note'>A score of - with reproduced = no: not reproduced within the "
              "budget.</p>", _table(head, rows)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>invmm mitigation-eval: {_e(out_dir.name)}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}<script>{SORT_JS}</script></body></html>")
    path = report_dir / "index.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
