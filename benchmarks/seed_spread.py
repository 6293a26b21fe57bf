"""Where an InvMM score's seed spread comes from, and the refined score beside the paper's, from one run.

One run of R repeats per image with the refinement on (config.refine): every ledger line holds the paper's score
and the refined score, with the pass-probability estimates it came from. Per copy level (finite paper scores):

- the check's verdict: on each repeat's own path, the variance of the paper's score over the check's luck (the
  refinement's `sd`, from its pass-probability estimates around the success: path held, check noise varied);
- the path: the variance over repeats of the refined score, the paper's score averaged over the check's luck
  (check noise averaged out, path varied), estimation noise included;
- the check grid: the KL growth from the last failing check to the success, and the variance of reading the
  score at a multiple of C rather than where the image became reproducible (the growth squared / 12, as if
  uniform within the interval); the verdict's variance already counts the grid's steps, so this is a lens on it.

Then the refined against the paper's score: median CV, Kendall tau of the most-duplicated images' rankings by two
single seeds, AUC most-duplicated vs held out, Spearman with the copy count, and the cost in forward-equivalents.
Usage:

    python benchmarks/seed_spread.py --counts 64:8,16:4,4:4,0:4 --repeats 5 --out bench-out/spread
    python benchmarks/seed_spread.py --model t2i --counts 64:8,0:4 --repeats 5 --out bench-out/spread_t2i
    python benchmarks/seed_spread.py ... --analyse      # the tables again from OUT/run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import repeats
from repeats import INF_RANK, finite_or_big
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import roc_auc_score

from invmm import measure
from invmm.functional import all_pass_probability, any_pass_probability, expected_first_success
from invmm.records import forward_equivalents
from invmm.store.files import Ledger


def setup(args):
    """The repeats benchmark's images and preset, with this run's check sampler and the refinement on."""
    model, items, level, cfg = repeats.setup(args)
    cfg = cfg.replace(sampler_steps=args.sampler_steps, refine=True, refine_samples=args.samples,
                      **({"refine_max_checks": args.max_checks} if args.max_checks is not None else {}))
    return model, items, level, cfg


def cv(xs) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.stdev(xs) / statistics.mean(xs) if len(xs) >= 2 else math.nan


def var(xs) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.variance(xs) if len(xs) >= 2 else math.nan


def fmt(x, d=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else ("inf" if math.isinf(x) else f"{x:.{d}f}")


def disjoint_taus(matrix: np.ndarray, r: int) -> list[float]:
    """Kendall tau between the rankings by the medians of every two disjoint sets of r repeats (columns)."""
    n = matrix.shape[1]
    out = []
    for a in itertools.combinations(range(n), r):
        for b in itertools.combinations([i for i in range(n) if i not in a], r):
            if a > b:
                continue
            t = kendalltau(np.median(matrix[:, list(a)], axis=1), np.median(matrix[:, list(b)], axis=1)).statistic
            if not math.isnan(t):
                out.append(float(t))
    return out


def single_taus(matrix: np.ndarray) -> list[float]:
    """Kendall tau-b between the image rankings of every two repeats (columns); inf ties last."""
    out = []
    for a, b in itertools.combinations(range(matrix.shape[1]), 2):
        t = kendalltau(matrix[:, a], matrix[:, b]).statistic
        if not math.isnan(t):
            out.append(float(t))
    return out


def analyse(records, level: dict, wall: float | None) -> dict:
    by_id: dict[str, list] = {}
    for r in records:
        if r.status == "ok":
            by_id.setdefault(r.id, []).append(r)
    ids = sorted(by_id, key=lambda i: (-level[i], i))
    for i in ids:
        by_id[i].sort(key=lambda r: r.repeat)
    R = max(len(v) for v in by_id.values())

    print("\n### Per image\n")
    print("| image | copies | reproduced | paper scores (repeats) | refined scores | CV paper | CV refined | "
          "P(pass) at the success, median |")
    print("|---|---|---|---|---|---|---|---|")
    for i in ids:
        reps = by_id[i]
        at_success = [_pass_at(r, r.steps) for r in reps if r.success]
        print(f"| {i} | {level[i]} | {sum(r.success for r in reps)}/{len(reps)} | "
              f"{', '.join(fmt(r.score) for r in reps)} | {', '.join(fmt(r.refined_score) for r in reps)} | "
              f"{fmt(cv([r.score for r in reps]), 2)} | {fmt(cv([r.refined_score for r in reps]), 2)} | "
              f"{fmt(statistics.median(at_success), 2) if at_success else '-'} |")

    print("\n### Decomposition of the paper score's variance over seeds (mean over images with >= 2 finite "
          "repeats)\n")
    print("| copies | images | total var | verdict (path held) | path (refined, check averaged) | "
          "of which estimation | verdict + path | grid: KL growth last fail -> success, median | "
          "grid var (growth^2/12) | verdict share | path share | grid share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = {}
    for lv in sorted({level[i] for i in ids}, reverse=True):
        rows = []
        for i in (i for i in ids if level[i] == lv):
            reps = [r for r in by_id[i] if r.success]
            if len(reps) < 2:
                continue
            growth = [_growth(r) for r in reps]
            rows.append({"total": var([r.score for r in reps]),
                         "verdict": statistics.mean((r.refine or {}).get("sd", 0.0) ** 2 for r in reps),
                         "path": var([r.refined_score for r in reps]),
                         "estimation": statistics.mean(_estimation_var(r) for r in reps),
                         "grid": statistics.mean(g ** 2 / 12 for g in growth if g is not None) if any(
                             g is not None for g in growth) else math.nan,
                         "growth": [g for g in growth if g is not None]})
        if not rows:
            continue
        m = {k: float(np.nanmean([x[k] for x in rows])) for k in ("total", "verdict", "path", "grid", "estimation")}
        growth = [g for x in rows for g in x["growth"]]
        table[lv] = m
        print(f"| {lv} | {len(rows)} | {m['total']:.4f} | {m['verdict']:.4f} | {m['path']:.4f} | "
              f"{m['estimation']:.4f} | {m['verdict'] + m['path']:.4f} | "
              f"{fmt(statistics.median(growth) if growth else math.nan)} | "
              f"{m['grid']:.4f} | {m['verdict'] / m['total']:.2f} | {m['path'] / m['total']:.2f} | "
              f"{m['grid'] / m['total']:.2f} |")

    print("\n### Refined against paper\n")
    top = max(level[i] for i in ids)
    held = [i for i in ids if level[i] == 0]
    trained = [i for i in ids if level[i] > 0]
    summary = {}
    for name, get in (("paper", lambda r: r.score), ("refined", lambda r: r.refined_score)):
        mat = np.array([[finite_or_big(get(r)) for r in by_id[i]] + [INF_RANK] * (R - len(by_id[i]))
                        for i in ids])
        cvs = {lv: [cv([get(r) for r in by_id[i]]) for i in ids if level[i] == lv] for lv in set(level.values())}
        tops = [k for k, i in enumerate(ids) if level[i] == top]
        taus = single_taus(mat[tops])
        pair_taus = disjoint_taus(mat[tops], 2) if R >= 4 else []
        row = {"median_cv": {lv: float(np.nanmedian(v)) if not all(math.isnan(x) for x in v) else math.nan
                             for lv, v in cvs.items() if lv > 0},
               "tau_top": (statistics.mean(taus), min(taus), max(taus)) if taus else None,
               "tau_top_median_of_2": (statistics.mean(pair_taus), min(pair_taus), max(pair_taus))
               if pair_taus else None}
        if held:
            aucs = []
            for c in range(R):
                use = [k for k, i in enumerate(ids) if level[i] in (top, 0)]
                y = [int(level[ids[k]] == top) for k in use]
                aucs.append(float(roc_auc_score(y, [-mat[k, c] for k in use])))
            row["auc_single"] = (statistics.mean(aucs), min(aucs))
        if len({level[i] for i in trained}) > 1:
            rhos = [float(spearmanr([level[ids[k]] for k, i in enumerate(ids) if level[i] > 0],
                                    [-mat[k, c] for k, i in enumerate(ids) if level[i] > 0]).statistic)
                    for c in range(R)]
            med = [statistics.median(mat[k]) for k, i in enumerate(ids) if level[i] > 0]
            row["spearman_single"] = statistics.mean(rhos)
            row["spearman_median"] = float(spearmanr([level[i] for i in trained], [-x for x in med]).statistic)
        summary[name] = row
    paper_fe = sum(forward_equivalents(_paper_calls(r)) for v in by_id.values() for r in v)
    total_fe = sum(forward_equivalents(r.calls) for v in by_id.values() for r in v)
    rep_fe = [forward_equivalents(r.calls) / max(1, forward_equivalents(_paper_calls(r)))
              for v in by_id.values() for r in v if r.success]
    levels = sorted(summary["paper"]["median_cv"], reverse=True)
    print("| score | " + " | ".join(f"median CV, {lv}-copy" for lv in levels) +
          f" | tau, two seeds, {top}-copy (mean [min, max]) | tau, medians of two disjoint pairs of seeds | "
          f"AUC {top}-copy vs held out, single seed (mean, min) | Spearman with copies (single seed mean; of "
          "medians) |")
    print("|---" * (len(levels) + 5) + "|")
    for name, row in summary.items():
        t = row["tau_top"]
        print(f"| {name} | " + " | ".join(fmt(row['median_cv'][lv], 2) for lv in levels) +
              f" | {fmt(t[0])} [{fmt(t[1])}, {fmt(t[2])}]" + " | " +
              (lambda u: f"{fmt(u[0])} [{fmt(u[1])}, {fmt(u[2])}]" if u else "-")(row["tau_top_median_of_2"]) + " | " +
              (f"{fmt(row['auc_single'][0])}, {fmt(row['auc_single'][1])}" if "auc_single" in row else "-") +
              " | " + (f"{fmt(row['spearman_single'])}; {fmt(row['spearman_median'])}"
                       if "spearman_single" in row else "-") + " |")
    print(f"\nforward-equivalents: paper {paper_fe:,}, with the refinement {total_fe:,} "
          f"(x{total_fe / paper_fe:.2f} over all inversions; per reproduced inversion median "
          f"x{statistics.median(rep_fe):.2f}, max x{max(rep_fe):.2f})")
    _attainable(by_id, [i for i in ids if level[i] == top], top)
    left = [(r.refine or {}).get("leftover", 0.0) for v in by_id.values() for r in v if r.success]
    if left:
        ended = Counter((r.refine or {}).get("ended", "?") for v in by_id.values() for r in v if r.success)
        print("leftover (1 - refined_success: the chance that no evaluated check passes, never put on a KL): median "
              f"{statistics.median(left):.3f}, > 0.1 in {sum(x > 0.1 for x in left)}/{len(left)} reproduced "
              f"inversions; continuations ended by {dict(ended)}")
    if wall is not None:
        print(f"wall: {wall:.0f} s for {sum(len(v) for v in by_id.values())} inversions")
    return {"decomposition": table, "summary": summary, "fe_paper": paper_fe, "fe_total": total_fe}


def _estimation_var(r, draws: int = 400) -> float:
    """The refined score's own sampling noise on this path: its variance when each evaluated check's samples are
    redrawn (a bootstrap of the samples: their copy bits per guidance scale, or with one scale the copy count
    from Binomial(samples, copies / samples))."""
    pts = (r.refine or {}).get("points", [])
    if not pts:
        return 0.0
    rng = np.random.default_rng(r.image_seed % (2**32))
    vals = []
    for _ in range(draws):
        pass_p = []
        for p in pts:
            if len(p) > 5:  # several scales: resample the samples' copy bits
                masks = rng.choice(p[5], size=len(p[5]), replace=True).tolist()
                pass_p.append(any_pass_probability(masks, max(p[5]).bit_length() or 1, 8))
            else:
                pass_p.append(all_pass_probability(int(rng.binomial(p[3], p[2] / p[3])), p[3], 8))
        mean = expected_first_success([(p[1], q) for p, q in zip(pts, pass_p)])[0]
        vals.append(r.score if math.isnan(mean) else mean)  # no chance left at all: the paper's score, as recorded
    return float(np.var(vals))


def _attainable(by_id: dict, ids: list[str], top: int, draws: int = 4000) -> None:
    """How far the images' true differences allow two seeds to agree: each image's mean score over its finite
    repeats stands for its true value, and two seeds' rankings are simulated as that value plus normal noise of
    the image's within-image spread (for the refined score also without its estimation noise, as with infinitely
    many samples). A tau far below 0.8 there means the images' differences are small against what remains."""
    rng = np.random.default_rng(0)
    print(f"\n### What the spread allows: {top}-copy images\n")
    print("| score | between-image SD of means | within-image SD (mean) | ICC | simulated tau, two seeds |")
    print("|---|---|---|---|---|")
    rows = {"paper": [[r.score for r in by_id[i] if r.success] for i in ids],
            "refined": [[r.refined_score for r in by_id[i] if r.success] for i in ids]}
    est = [statistics.mean(_estimation_var(r) for r in by_id[i] if r.success) for i in ids]
    for name, within_less in (("paper", None), ("refined", None), ("refined, no estimation noise", est)):
        vals = rows["refined" if name.startswith("refined") else "paper"]
        use = [k for k, v in enumerate(vals) if len(v) >= 2]
        means = np.array([statistics.mean(vals[k]) for k in use])
        within = np.array([statistics.variance(vals[k]) - (within_less[k] if within_less else 0.0) for k in use])
        within = np.clip(within, 0.0, None)
        between = float(np.var(means, ddof=1))
        n = statistics.mean(len(vals[k]) for k in use)
        icc = max(0.0, between - within.mean() / n) / (max(0.0, between - within.mean() / n) + within.mean())
        taus = [kendalltau(means + rng.normal(0, np.sqrt(within)), means + rng.normal(0, np.sqrt(within))).statistic
                for _ in range(draws)]
        print(f"| {name} | {math.sqrt(between):.3f} | {float(np.sqrt(within).mean()):.3f} | {icc:.2f} | "
              f"{float(np.mean(taus)):.3f} |")


def _paper_calls(r) -> dict:
    extra = (r.refine or {}).get("calls", {})
    return {k: v - extra.get(k, 0) for k, v in r.calls.items()}


def _pass_at(r, step: int) -> float:
    pts = [p for p in (r.refine or {}).get("points", []) if p[0] == step]
    if not pts:
        return math.nan
    if len(pts[0]) > 4:
        return pts[0][4]
    _, _, copies, n = pts[0][:4]
    return all_pass_probability(copies, n, 8)


def _growth(r) -> float | None:
    """The KL from the last check before the success to the success (one C of steps)."""
    if len(r.checks) < 2:
        return None
    return r.checks[-1].kl - r.checks[-2].kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("digits", "t2i"), default="digits")
    ap.add_argument("--counts", default="64:8,16:4,4:4,0:4", help="level:n,...; level 0 = held out")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=32, help="refine_samples")
    ap.add_argument("--max-checks", type=int, default=None, help="refine_max_checks (default: the config's)")
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyse", action="store_true", help="the tables of the finished run in OUT/run")
    ap.add_argument("--out", type=Path, default=Path("bench-out/spread"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, items, level, cfg = setup(args)
    wall = None
    if not args.analyse:
        t0 = time.perf_counter()
        measure(str(model), items, cfg, out=args.out / "run", batch_images=args.batch_images, repeats=args.repeats,
                on_result=lambda r: print(f"  {r.id} r{r.repeat}: paper {r.score:.4f} refined "
                                          f"{r.refined_score} steps {r.steps}", flush=True))
        wall = time.perf_counter() - t0
    out = analyse(Ledger(args.out / "run").read(), level, wall)
    (args.out / "summary.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
