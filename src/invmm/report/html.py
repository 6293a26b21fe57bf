"""`invmm report RUN`: one self-contained offline HTML page (images inlined, no external scripts or fonts),
the figures as PNG beside it, and the table of all images as CSV.

Everything that comes from the user's data (ids, paths, captions, labels, errors) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from pathlib import Path

import numpy as np

from invmm.analysis.assess import assess_run, statement
from invmm.analysis.compare import compare_runs, comparison_html
from invmm.analysis.evaluate import choose_labels
from invmm.analysis.metrics import bootstrap_intervals, oriented, roc_metrics
from invmm.analysis.plots import check_curves_png, histograms_png, intervals_png, roc_png
from invmm.analysis.population import Policy
from invmm.errors import InvMMInputError
from invmm.records import MIXED_REGIONS_NOTE, ImageSummary, forward_equivalents, region_counts, sum_calls, summarise
from invmm.repeats import compare_scores, rep_score
from invmm.report.export import write_table_csv
from invmm.runs.design import strata
from invmm.runs.scores import read_scores
from invmm.runs.screen import suspicion_order
from invmm.store.artifacts import artifact_stems
from invmm.store.files import RUN_FILE, Ledger, atomic_write_bytes
from invmm.store.folder import mask_text

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.setAttribute('data-ready', 'yes');
"""

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; cursor: pointer; } th[data-dir=asc]::after { content: " \\25B2"; }
th[data-dir=desc]::after { content: " \\25BC"; }
.meta td:first-child { font-weight: bold; } img.grid { image-rendering: pixelated; max-width: 640px; }
.err { color: #a00; } .note { color: #555; font-size: 0.9em; }
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(v, digits=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}g}"
    return str(v)


def _sort_value(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and math.isinf(v):
        return "1e308"
    return "" if v is None else str(v)


def build_report(run_dir: str | Path, *, top_k: int = 12, positive: list[str] | None = None,
                 out: Path | None = None, compare_with: str | Path | None = None, rank_by: str = "paper",
                 policy: Policy | None = None) -> Path:
    """`compare_with`: a run of the base model over the same images; the report then shows what this run's
    model (the fine-tune) added (compare.py). `rank_by`: "paper", or "refined" for a run made with the
    refinement: the ranking, figures and comparison then use the refined score. An audit's report opens with its
    assessment (analysis/assess.py), decided under `policy` when one is given."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        raise InvMMInputError(f"{run_dir}: no {RUN_FILE}; give a folder written by `invmm audit` or `invmm measure`")
    info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    records = Ledger(run_dir).read()
    stems = artifact_stems(run_dir, info, ((r.id, r.repeat) for r in records))  # where each inversion's files are
    results = summarise(records, by=rank_by)  # one row per image, summarised over its repeats
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    compare_section = comparison_html(compare_runs(compare_with, run_dir, by=rank_by)) if compare_with else ""
    ok = [r for r in results if r.status == "ok"]
    errors = [r for r in results if r.status != "ok"]
    finite = [r for r in ok if math.isfinite(r.score)]
    labels = sorted({r.label for r in ok if r.label is not None})

    assessment = assess_run(run_dir, policy) if info.get("kind") == "audit" and not (
        info.get("design") or {}).get("part") else None
    stratum = strata(info.get("design"))
    kinds = region_counts(ok)
    mixed = all(kinds.values())  # masked and whole-image scores in one run (--mask auto, a partial mask column)

    # Figures (with both kinds of region, one series per kind: they are on different scales).
    def series(lab, rows):
        if not mixed:
            return {lab: [r.score for r in rows]}
        return {f"{lab}, {kind}": [r.score for r in rows if r.measured_on == kind] for kind in ("mask", "whole")}

    by_label = {}
    for lab in labels or [None]:
        by_label.update(series(lab or "all images", [r for r in ok if lab is None or r.label == lab]))
    figures = {}
    (out / "histogram.png").unlink(missing_ok=True)  # a report rewritten after its run lost every finite score
    if finite:  # with nothing finite the figure would be an empty frame; the sentence above it says it all
        figures["histogram"] = histograms_png({"InvMM score (lower = more memorized)": by_label},
                                              out / "histogram.png", f"{len(finite)} reproduced, "
                                              f"{len(ok) - len(finite)} not reproduced (inf, not drawn)")
    roc_section = ""
    if len(labels) >= 2:
        roc_section = _roc_section(ok, labels, positive, out, figures)
        if mixed and roc_section:  # the labels' scores hold both kinds: say so where they are compared
            roc_section = roc_section.replace("</h2>", f"</h2><p class='note'>The scores compared here are of both "
                                                       f"kinds ({kinds['mask']} on a mask, {kinds['whole']} whole): "
                                                       f"{_e(MIXED_REGIONS_NOTE)}.</p>", 1)

    write_table_csv(results, out / "images.csv")

    seconds = [r.seconds for r in ok if r.seconds is not None]
    median_s = _fmt(statistics.median(seconds) if seconds else None)
    scored_in_sessions = sum(x.get("scored", 0) + x.get("errors", 0) for x in info.get("sessions", []))
    sessions = info.get("sessions", [])
    wall = sum(x.get("seconds", 0) for x in sessions)
    device = info.get("device", "cpu")
    unit = "GPU" if any("cuda" in str(x.get("device", device)) for x in sessions) else "CPU-worker"
    per_image = _fmt(wall / scored_in_sessions if scored_in_sessions else None, 3)
    worker_hours = sum(x.get("seconds", 0) * x.get("workers", 1) for x in sessions) / 3600
    cfg = info.get("config", {})
    data = info.get("dataset", {})
    meta = [
        ("model", info.get("model_path") or info.get("model", {}).get("source")),
        ("model family", info.get("model", {}).get("family")),
        *([("LoRA", "; ".join(f"{r['path']} (sha256 {r['sha256'][:12]}, scale {r['scale']})"
                             for r in info["model"]["loras"]))] if info.get("model", {}).get("loras") else []),
        ("weights fingerprint", (info.get("model_fingerprint") or "")[:16]),
        ("created", info.get("created")),
        ("seed", info.get("seed", cfg.get("seed"))),
        ("preset / similarity / beta", f"{cfg.get('preset')} / {cfg.get('similarity')} / {cfg.get('beta')}"),
        ("budget", f"{cfg.get('max_steps')} steps; a check every {cfg.get('check_every')} steps with "
                   f"{cfg.get('n_check_samples')} samples, {cfg.get('sampler')} {cfg.get('sampler_steps')} steps"),
        ("dataset", f"{data.get('source', '')} ({data.get('n', len(results))} images)"),
        *_dataset_rows(data, info),
        *_mask_rows(info),
        ("backend / device", f"{info.get('backend', 'local')} / {device}"),
        ("images in ledger", f"{len(results)}: {len(ok)} scored ({len(finite)} reproduced, {len(ok) - len(finite)} "
                             f"not reproduced within the budget), {len(errors)} failed"),
        ("repeats per image", _repeats_text(results, info)),
        *([("early stopping", stopping)] if (stopping := early_stop_text(results)) else []),
        ("cost", f"{wall / 3600:.3f} h wall over {len(sessions)} finished session(s), {worker_hours:.3f} {unit} "
                 f"hours, {per_image} s wall per image; median {median_s} s from an image's start to its result "
                 "(images run in batches)"),
        ("model calls", _calls_text(results)),
        ("versions", ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if k != "platform")),
    ]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>InvMM audit report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>InvMM audit report: {_e(run_dir.name)}</h1>",
             "<p class='note'>InvMM score: KL divergence of the fitted noise distribution from N(0, I) when its "
             "samples first all reproduce the image. Lower = more strongly memorized; inf = not reproduced within the "
             "budget.</p>" + (REFINED_NOTE if rank_by == "refined" else ""),
             _assessment_section(assessment),
             "<h2>Run</h2><table class='meta'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                                          for k, v in meta) + "</table>",
             "<h2>Scores</h2>",
             (f"<p class='note'><b>{kinds['mask']} image(s) were measured on a mask and {kinds['whole']} on the "
              f"whole image</b>: {_e(MIXED_REGIONS_NOTE)}. The histogram draws each kind apart; the rankings and "
              "the evaluation below hold both and mark each row.</p>" if mixed else ""),
             f"<p>{len(finite)} finite scores drawn; {len(ok) - len(finite)} images scored +inf (not reproduced) are "
             "counted, not drawn.</p>",
             (f"<img alt='histogram of InvMM scores' src='{_png(figures['histogram'])}' style='max-width:720px'>"
              if "histogram" in figures else ""),
             roc_section,
             compare_section,
             _screen_section(run_dir, info, results),
             _top_section(stems, finite, top_k, out, cfg.get("beta")),
             _misses_section(stems, ok, top_k, out, cfg.get("beta")),
             _table_section(results, stratum),
             f"<script>{SORT_JS}</script></body></html>"]
    page = out / "index.html"
    atomic_write_bytes(page, "\n".join(parts).encode("utf-8"))
    return page


REFINED_NOTE = ("<p class='note'><b>Every score in this report is the refined score</b> (--by refined): "
                "the paper's score averaged over the success check's luck on the same inversion, given a success "
                "within the budget, from the chance that a check passes, estimated with many samples at the checks "
                "around the success; refined_success is that estimated chance of a success within the budget. It "
                "moves less with the seed than the paper's score; images.csv holds both.</p>")


def _roc_section(ok: list[ImageSummary], labels: list[str], positive, out: Path, figures: dict) -> str:
    from sklearn.metrics import roc_curve

    try:
        cmp = choose_labels([r.label for r in ok if r.label is not None], positive, None)
    except InvMMInputError as exc:
        return f"<h2>Evaluation by label</h2><p class='note'>{_e(exc)}</p>"
    use = [r for r in ok if r.label in cmp.positive + cmp.negative]
    y = np.array([r.label in cmp.positive for r in use], dtype=int)
    s = np.array([r.score for r in use])
    if len(set(y.tolist())) < 2:
        return ""
    m = roc_metrics(y, s, higher_is_better=False)
    ci = bootstrap_intervals(y, s, higher_is_better=False, n_boot=1000, seed=0)
    fpr, tpr, _ = roc_curve(y, oriented(s, False))
    title = f"{'+'.join(cmp.positive)} vs {'+'.join(cmp.negative)}"
    figures["roc"] = roc_png({"InvMM": (fpr, tpr, m["auc"])}, out / "roc.png", title)
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{v:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]</td></tr>"
                    for k, v in m.items() if k in ci)
    return (f"<h2>Evaluation by label: {_e(title)}</h2><p>positives: {int(y.sum())}, negatives: "
            f"{int(len(y) - y.sum())} (bootstrap 95% intervals)</p><table class='meta'>{cells}</table>"
            f"<img alt='ROC curve' src='{_png(figures['roc'])}' style='max-width:900px'>")


def _dataset_rows(data: dict, info: dict) -> list[tuple[str, str]]:
    """What the reader skipped or could not list (shards, img2dataset), and which parts a merged run joined."""
    rows = []
    if data.get("kind") and data["kind"] not in ("folder", "manifest"):
        rows.append(("dataset kind / content sha256", f"{data['kind']} / {(data.get('content_sha256') or '')[:16]}"))
    skipped = data.get("skipped") or {}
    if skipped:
        examples = data.get("skipped_examples") or {}
        rows.append(("rows skipped by the dataset", "; ".join(f"{n} {status} (e.g. {examples.get(status, '')})"
                                                              for status, n in skipped.items())))
    for problem in data.get("problems") or []:
        rows.append(("dataset problem", problem))
    merged = info.get("parts_merged")
    if merged:
        rows.append(("merged parts", f"{', '.join(map(str, merged['parts']))} of {merged['of']}"
                                     + ("" if merged["complete"] else " (incomplete)")))
        for x in merged.get("incomplete_parts", []):
            rows.append(("incomplete part", f"part {x['part']} ({x['run']}) lacks {x['missing']} result(s): merged "
                                            "with --allow-incomplete"))
        lacking = merged.get("kept_without_results") or []
        if lacking:
            rows.append(("kept without results", f"{len(lacking)} image(s) of the screen's top K have no result "
                                                 f"(first: {', '.join(lacking[:3])})"))
    return rows


def _screen_section(run_dir: Path, info: dict, results: list[ImageSummary], shown: int = 50) -> str:
    """Stage 1 of a screened audit: what the cheap scorer ranked, and which images InvMM skipped."""
    sc = info.get("screen")
    if not sc:
        return ""
    records = [r for r in read_scores(run_dir / sc["folder"]) if r.scorer == sc["settings"]["name"]]
    inverted = {r.id for r in results}
    order = suspicion_order(records, sc["settings"]["higher_is_better"])
    skipped = [r for r in order if r.id not in inverted]
    rows = "".join(f"<tr><td>{_e(r.id)}</td><td>{_fmt(r.score)}</td><td>{_e(r.label or '')}</td></tr>"
                   for r in skipped[:shown])
    rule = f"the top {sc['keep']:.0%}" if sc.get("keep") is not None else f"the top {sc['keep_top']}"
    return (f"<h2>Screen: {_e(sc['scorer'])}</h2><p>Stage 1 scored all {sc['of']} images with "
            f"<b>{_e(sc['scorer'])}</b> ({'higher' if sc['settings']['higher_is_better'] else 'lower'} = more "
            f"suspicious); stage 2 inverted {rule}: {sc['kept']} images. InvMM skipped {len(skipped)} images; "
            f"their screen scores are in {_e(sc['folder'])}/scores.jsonl. The skipped images closest to the cut "
            f"({min(shown, len(skipped))} shown):</p><table><thead><tr><th>skipped image</th><th>screen score</th>"
            f"<th>label</th></tr></thead><tbody>{rows}</tbody></table>")


def _calls_text(results: list[ImageSummary]) -> str:
    counted = [r for r in results if r.calls]
    if not counted:
        return "not recorded (run made before model calls were counted)"
    total = sum_calls(r.calls for r in counted)
    fe = forward_equivalents(total)
    share = total["check_forward"] / fe if fe else 0.0
    return (f"{fe:,} denoiser forward-equivalents (a backward counted as 2 forwards), {share:.0%} of them in the "
            f"success checks; {fe / len(counted):,.0f} per image. Forwards: optimisation {total['opt_forward']:,}, "
            f"checks {total['check_forward']:,}; VAE encode/decode {total['vae_encode']:,}/{total['vae_decode']:,}, "
            f"text encoder {total['text_encoder']:,}, similarity {total['similarity']:,}{_skips_text(counted)}")


def _cell(r: ImageSummary, column: str, stratum: dict):
    if column == "masked_fraction":
        return (r.mask or {}).get("fraction")
    if column == "stratum":
        return stratum.get(r.id, "census")
    if column == "stopped_early":
        return _stopped(r)
    return getattr(r, column)


def _stopped(r: ImageSummary) -> str | None:
    """The table's early-stop cell: the step a stopped inversion ended at (its steps are those it ran)."""
    if r.early_stop is None:
        return None
    return f"at step {r.early_stop['step']}" if r.early_stop.get("stopped") else "no"


def early_stop_text(results: list[ImageSummary]) -> str:
    """What early stopping did in this run, so that no stopped inf is read as a completed budget."""
    on = [r for r in results if r.early_stop is not None]
    if not on:
        return ""
    stopped = [r for r in on if r.early_stop.get("stopped")]
    steps = sorted(r.early_stop["step"] for r in stopped)
    span = f" at steps {steps[0]:,}-{steps[-1]:,}" if steps else ""
    patience = stopped[0].early_stop["patience"] if stopped else None
    return (f"Early stopping (--early-stop{f', patience {patience:,} steps' if patience else ''}): {len(stopped)} of "
            f"{len(on)} images stopped before their budget{span}, predicted not to be reproduced (none of their "
            "samples, nor an examination of more at the patience, was a copy); they count as inf, and their steps "
            "are the steps they ran. The rule's false-stop rate is measured in docs/benchmarks/early-stopping.md")


def _skips_text(results: list[ImageSummary]) -> str:
    """The opt-in check shortcuts, which may change decisions: say how many checks they decided."""
    preview = sum(r.check_skips.get("preview", 0) for r in results)
    rec = sum(r.check_skips.get("rec", 0) for r in results)
    if not preview and not rec:
        return ""
    return (f". Opt-in check shortcuts (decisions may differ from the exact check): {preview:,} checks ended at "
            f"the preview, {rec:,} were skipped on the reconstruction loss")


def _repeats_text(results: list[ImageSummary], info: dict) -> str:
    counts = sorted({r.n_repeats for r in results})
    planned = info.get("repeats", 1)
    text = ", ".join(str(c) for c in counts) or str(planned)
    if planned > 1:
        text += (f" (asked for {planned}); the score of an image is the median over its repeats (inf ordered last), "
                 "shown with the number of repeats that reproduced it and an order-statistic interval of the median")
    return text


def _curves(out: Path, r: ImageSummary, beta, name: str) -> str:
    runs = [(f"repeat {rep['repeat']}", rep.get("checks") or []) for rep in r.repeats] or [("", r.checks)]
    if not any(c for _, c in runs) or beta is None:
        return ""
    path = check_curves_png(runs, float(beta), out / "curves" / f"{name}.png",
                            "worst check sample's similarity (dashed: threshold) and KL, per check")
    return f"<img alt='similarity and KL against steps' src='{_png(path)}' style='max-width:560px'>"


def _interval_text(r: ImageSummary) -> str:
    if r.score_low is None:
        return "-"
    return f"[{_fmt(r.score_low)}, {_fmt(r.score_high)}] ({r.interval_coverage:.0%})"


def _top_section(stems: dict, finite: list[ImageSummary], k: int, out: Path, beta) -> str:
    top = sorted(finite, key=lambda r: (r.score, r.id))[:k]
    if not top:
        return "<h2>Most memorized</h2><p>No image was reproduced within the budget.</p>"
    (out / "curves").mkdir(parents=True, exist_ok=True)
    repeated = any(r.n_repeats > 1 for r in top)
    bars = ""
    if repeated:
        fig = intervals_png([r.id for r in top], [r.score for r in top], [r.score_low for r in top],
                            [r.score_high for r in top], out / "top_intervals.png",
                            "median and order-statistic interval of the median")
        bars = f"<img alt='median scores with intervals' src='{_png(fig)}' style='max-width:760px'>"
    rows_html = []
    for i, r in enumerate(top):
        png = _artifact(stems, r, ".png")
        img = f"<img class='grid' alt='target and check samples' src='{_png(png)}'>" if png else "(no image)"
        img += _map_img(stems, r)
        below = f"{compare_scores(r, top[i + 1]):.2f}" if i + 1 < len(top) else "-"
        rows_html.append(
            f"<tr><td>{_e(r.id)}<br><span class='note'>{_e(r.caption or _class_text(r))}{_region_text(r)}</span>"
            f"</td><td>{img}<br>"
            f"{_curves(out, r, beta, f'top-{i}')}</td><td>{_fmt(r.score)}</td>"
            f"<td>{r.successes or 0}/{r.n_repeats}</td><td>{_interval_text(r)}</td><td>{below}</td>"
            f"<td>{_fmt(r.min_similarity, 3)}</td><td>{r.steps}</td></tr>")
    return (f"<h2>Most memorized ({len(top)})</h2><p class='note'>Ranked by the median score over the repeats. Each "
            "row: the target, then the samples of the check that succeeded (in the median repeat), then its "
            "memorization map (" + MAP_NOTE + "); below, the worst "
            "check sample's similarity and the KL at every check. <b>P(lower than next)</b>: the probability that a "
            "repeat of this image scores below a repeat of the next image in the list (0.5: the repeats cannot tell "
            "them apart; see invmm.compare_scores).</p>" + bars +
            "<table><thead><tr><th>image</th><th>target | check samples</th><th>score</th><th>reproduced</th>"
            "<th>interval (coverage)</th><th>P(lower than next)</th><th>min similarity</th><th>steps</th></tr></thead>"
            "<tbody>" + "".join(rows_html) + "</tbody></table>")


def _best_similarity(r: ImageSummary) -> float:
    checks = [c for rep in r.repeats for c in (rep.get("checks") or [])] or r.checks
    return max((c[3] for c in checks), default=-math.inf)


MAP_NOTE = ("memorization map: the target, the share of samples from the fitted noise that reproduce each pixel "
            "beyond the share of samples from N(0, I) that do (white: all of them), and the target with the pixels "
            "at 0.5 or more tinted red")


def _region_text(r: ImageSummary) -> str:
    """Where a masked score came from, beside the image (whole-image scores say nothing)."""
    if r.measured_on != "mask":
        return ""
    return f"<br>measured on a mask ({_fmt(r.mask.get('fraction'), 3)} of the image, sha256 {_e(r.region[1][:12])})"


def _artifact(stems: dict, r: ImageSummary, suffix: str) -> Path | None:
    """The file of the summary's repeat, if the run holds it (and, in an older run, it is that image's own)."""
    stem = stems.get((r.id, r.repeat))
    return Path(f"{stem}{suffix}") if stem is not None and Path(f"{stem}{suffix}").exists() else None


def _map_img(stems: dict, r: ImageSummary) -> str:
    png = _artifact(stems, r, ".map.png")
    return f"<br><img class='grid' alt='memorization map' src='{_png(png)}'>" if png else ""


def _mask_rows(info: dict) -> list[tuple[str, str]]:
    """What run.json says of the masks: none, one file, a manifest's or the automatic ones."""
    mask, auto = info.get("mask"), info.get("auto_mask")
    rows = []
    if mask:
        rows.append(("mask (partial memorization)", mask_text(mask) + "; the check compares the masked region, the "
                     f"reconstruction loss is {info.get('config', {}).get('mask_loss', 'weighted')}"))
    if auto:
        rows.append(("automatic masks", f"from the memorization maps of a first, whole-image pass (in "
                     f"{auto['first_pass']}/), thresholded at {auto['threshold']}: {auto['masked']} image(s) "
                     f"measured masked, {auto['kept_whole']} kept with the first pass's result (reproduced whole, or "
                     "no region marked)"))
    return rows


def _misses_section(stems: dict, ok: list[ImageSummary], k: int, out: Path, beta) -> str:
    """The images not reproduced (median +inf) that came closest to the threshold: a larger budget, or a
    check at another guidance scale, would reproduce these first."""
    misses = sorted((r for r in ok if math.isinf(r.score)), key=lambda r: (-_best_similarity(r), r.id))[:k]
    if not misses:
        return ""
    (out / "curves").mkdir(parents=True, exist_ok=True)
    rows_html = []
    for i, r in enumerate(misses):
        reps = [rep_score(x) for x in r.repeats] or [r.score]
        finite = sorted(x for x in reps if math.isfinite(x))
        rows_html.append(
            f"<tr><td>{_e(r.id)}{_region_text(r)}</td><td>{_fmt(_best_similarity(r), 3)}</td>"
            f"<td>{r.successes or 0}/{r.n_repeats}"
            f"{' (' + ', '.join(_fmt(x) for x in finite) + ')' if finite else ''}</td><td>{r.steps}</td>"
            f"<td>{_map_img(stems, r) or '-'}<br>{_fmt(r.reproduced_fraction, 3)}</td>"
            f"<td>{_curves(out, r, beta, f'miss-{i}')}</td></tr>")
    return (f"<h2>Closest to reproduced ({len(misses)} of {sum(math.isinf(r.score) for r in ok)} not reproduced)"
            f"</h2><p class='note'>Images whose median score is inf, by the best worst-sample similarity any check "
            f"reached (threshold {_e(beta)}). A curve still rising at the budget's end means a larger budget may "
            "reproduce the image; a flat one far below the threshold means it is not memorized at this budget. The "
            "memorization map shows whether a region is reproduced all the same (partial memorization: measure it "
            "with --mask). " + MAP_NOTE + "</p>"
            "<table><thead><tr><th>image</th><th>best min similarity</th><th>reproduced (scores)</th><th>steps</th>"
            "<th>memorization map, share reproduced</th><th>similarity and KL per check</th></tr></thead><tbody>"
            + "".join(rows_html) + "</tbody></table>")


def _class_text(r: ImageSummary) -> str:
    """A class-conditional result's class: given, or decoded from the inverted distribution."""
    if r.class_label is None:
        return ""
    name = f" ({r.class_name})" if r.class_name else ""
    return f"class {r.class_label}{name}" + (", inverted" if r.class_mode == "inverted" else "")


def _assessment_section(a) -> str:
    """The model-level answer first: the statement, the strata, the bounds and the decision under the policy."""
    if a is None:
        return ""
    c, e = a.counts, a.estimate
    conf = f"{100 * e.confidence:g}%"
    kind = "every image" if a.design_kind == "everything" else a.design_kind
    rows = [("population", f"{c.population:,} images"),
            ("census stratum", f"{c.census:,} images ({kind}), {c.census_found} reproduced, {c.census_unknown} "
                               "without an outcome"),
            ("random sample of the rest", f"{c.drawn:,} of {c.rest:,} images, {c.found} reproduced, {c.unknown} "
                                          "without an outcome" if c.drawn else
             ("none: the rest was not looked at" if c.rest else "none needed: every image was inverted")),
            (f"{conf} two-sided interval", f"[{e.two_sided[0]:,}, "
                                           f"{'unbounded' if e.two_sided[1] is None else format(e.two_sided[1], ',')}]"
                                           " images"),
            (f"{conf} one-sided bounds", f"at least {e.lower:,}, at most "
                                         f"{'unbounded' if e.upper is None else format(e.upper, ',')}")]
    if a.recall and a.recall.get("recall") is not None:
        rows.append(("screen recall", f"{a.recall['recall']:.2f} (at least {a.recall['lower']:.2f})"))
    if a.policy is not None:
        rows.append(("policy", f"at most {100 * a.policy.max_rate:g}% of the population"
                               + (f", at most {a.policy.max_count} found" if a.policy.max_count is not None else "")))
        rows.append(("decision", a.decision + (f": about {a.plan['more']:,} more random images would decide"
                                               if a.plan else "")))
    return ("<h2>Is this model safe to ship?</h2>"
            f"<p><b>{_e(statement(a))}</b></p><table class='meta'>"
            + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"
            + "".join(f"<p class='note'>{_e(n)}</p>" for n in a.notes)
            + "<p class='note'>What this promises: a count of images the model reproduces within this run's budget "
              "and settings, not a proof that any other image can never be produced. `invmm assess RUN --max-rate R` "
              "decides it as a release gate.</p>")


def _table_section(results: list[ImageSummary], stratum: dict | None = None) -> str:
    refined = ["refined_score", "refined_success"] if any(r.refined_score is not None for r in results) else []
    stratum = stratum or {}
    cols = ["id", *(["stratum"] if stratum else []), "label", "score", *refined,
            "success", "successes", "n_repeats", "score_low", "score_high", "steps",
            *(["stopped_early"] if any(r.early_stop is not None for r in results) else []),
            "min_similarity", "reproduced_fraction",
            *(["measured_on", "masked_fraction"] if any(r.mask for r in results) else []),
            "caption", "error"]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for r in results:
        cells = []
        for c in cols:
            v = _cell(r, c, stratum)
            if c == "score" and r.status != "ok":
                v = None
            cls = " class='err'" if c == "error" and v else ""
            cells.append(f"<td data-v='{_e(_sort_value(v))}'{cls}>{_e(_fmt(v) if c != 'caption' else v or '')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>All images ({len(results)})</h2><p class='note'>Click a column to sort. Also in images.csv.</p>"
            f"<table class='sortable' id='all'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
