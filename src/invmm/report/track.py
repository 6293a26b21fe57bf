"""`invmm report OUT` for an `invmm track` folder: memorization against training step (a figure), the checkpoint
table with exact intervals, the last safe checkpoint under a policy, and the onset table; one offline page, every
value from the user's data escaped. Each checkpoint's own run folder keeps its ordinary report."""

from __future__ import annotations

from pathlib import Path

from invmm.analysis.plots import track_png
from invmm.analysis.population import Policy
from invmm.analysis.tracking import TRACK_FILE, read_track, step_folders, summarise_track, write_track
from invmm.report.html import CSS, SORT_JS, _e, _png
from invmm.store.files import atomic_write_bytes


def is_track_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / TRACK_FILE).is_file() or (path.is_dir() and not (path / "run.json").exists()
                                             and bool(step_folders(path)))


def _cell(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else _e(v)


def build_track_report(out_dir: str | Path, *, policy: Policy | None = None, positive=None, negative=None,
                       report_dir: Path | None = None, top: int = 8) -> Path:
    """Summarise OUT's run folders afresh (so the page shows every checkpoint audited so far), rewrite track.json,
    and write OUT/report/index.html with the figure beside it. What `invmm track` was given (the labels, the policy,
    --score-below) holds unless given here."""
    out_dir = Path(out_dir)
    last = read_track(out_dir) or {}
    labels = last.get("labels") or {}
    if policy is None and last.get("policy"):
        policy = Policy(**last["policy"])
    summary = summarise_track(out_dir, policy=policy, positive=positive or labels.get("positive"),
                              negative=negative or labels.get("negative"), score_below=last.get("score_below"),
                              errors={f["step"]: f["error"] for f in last.get("failed") or []})
    write_track(out_dir, summary)
    report_dir = Path(report_dir) if report_dir else out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = summary["checkpoints"]
    parts = [f"<h1>Memorization over training: {_e(out_dir)}</h1>"]
    if rows:
        conf = f"{100 * rows[0]['confidence']:g}%"
        parts.append(f"<p>What is counted: the images {_e(summary['quantity'])}, of {rows[0]['population']:,} "
                     f"(DATA), at every checkpoint with the same data, settings and seed. Intervals are exact "
                     f"({conf}, two-sided) for the count of the {rows[0]['population']:,} images.</p>")
        figure = track_png(summary, report_dir / "track.png", top=top)
        parts.append(f"<img src='{_png(figure)}' alt='memorization against training step' style='max-width:100%'>")
        parts.append(_policy_html(summary))
        parts.append(_checkpoints_html(summary, conf))
    for f in summary["failed"]:
        parts.append(f"<p class='err'>step {f['step']}: not audited: {_e(f['error'])}</p>")
    parts.append(_onsets_html(summary))
    parts += [f"<p class='note'>note: {_e(n)}</p>" for n in summary["notes"]]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>invmm track: {_e(out_dir.name)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}<script>{SORT_JS}</script></body></html>")
    path = report_dir / "index.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _policy_html(summary: dict) -> str:
    p = summary["policy"]
    first = summary["first_reproducing"]
    text = (f"<p><b>First checkpoint that reproduces a training image:</b> "
            f"{'none' if first is None else f'step {first}'}.</p>")
    if not p:
        return text + "<p class='note'>Give --max-rate R to mark the last safe checkpoint.</p>"
    safe = summary["last_safe"]
    why = summary.get("last_safe_why") or ""
    return text + (f"<p><b>Last safe checkpoint</b> (every checkpoint up to it keeps the {100 * p['confidence']:g}% "
                   f"one-sided upper bound within {100 * p['max_rate']:g}% of the images): "
                   f"<b>{'none' if safe is None else f'step {safe}'}</b> ({_e(why)}).</p>")


def _checkpoints_html(summary: dict, conf: str) -> str:
    head = ["step", "checkpoint", "reproduced", f"{conf} interval", "median score", "median refined",
            "screen AUC", "stopped early", "decision", "run folder"]
    body = []
    for r in summary["checkpoints"]:
        screen = r["screen"] or {}
        auc = screen.get("auc")
        auc_text = "-" if not screen else (f"{auc:.3f} ({_e(screen['scorer'])})" if auc is not None else
                                           f"- ({_e(screen.get('why'))})")
        upper = "unbounded" if r["upper"] is None else r["upper"]
        cells = [r["step"], _e(r["kind"]), f"{r['reproduced']}/{r['n']}", f"[{r['lower']}, {upper}]",
                 _cell(r["median_score"]), _cell(r["median_refined"]), auc_text, r["stopped_early"],
                 _e(r["decision"] or "-"), _e(Path(r["run"]).name)]
        body.append("<tr>" + "".join(f"<td data-v='{_e(c) if not isinstance(c, int) else c}'>{c}</td>"
                                     for c in cells) + "</tr>")
    return ("<h2>Checkpoints</h2><table class='sortable'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def _onsets_html(summary: dict) -> str:
    images = summary["images"]
    steps = [str(r["step"]) for r in summary["checkpoints"]]
    hit = sorted((i for i, e in images.items() if e["onset"] is not None), key=lambda i: (images[i]["onset"], i))
    never = len(images) - len(hit)
    rows = []
    for i in hit:
        e = images[i]
        cells = [_e(i), str(e["onset"]), "yes" if e["stays"] else "no"]
        cells += ["-" if s not in e["scores"] else "inf" if e["scores"][s] is None else f"{e['scores'][s]:.3f}"
                  for s in steps]
        rows.append("<tr>" + "".join(f"<td data-v='{c}'>{c}</td>" for c in cells) + "</tr>")
    head = ["image", "onset", "stays", *steps]
    table = ("<table class='sortable'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>"
             "<tbody>" + "".join(rows) + "</tbody></table>") if rows else ""
    return ("<h2>Onsets</h2><p>Per image: the first checkpoint from which it is reproduced, whether every later "
            "checkpoint reproduces it too, and its score at each (inf: not reproduced; -: not measured there).</p>"
            + table + f"<p>Never reproduced: {never} image(s).</p>")

