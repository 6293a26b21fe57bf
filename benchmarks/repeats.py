"""How much an InvMM score moves with the seed: R independent inversions per image on a shipped toy model.

Per image: the success rate k/R, the spread of its finite scores (coefficient of variation), the median
and its order-statistic interval. Across images: Kendall's tau between the image rankings of any two
repeats (each repeat is an independent seed), and the ROC AUC of most-duplicated vs held-out when each
image's score is the median of its first 1, 3, ..., R repeats (a repeat does not depend on how many were
asked for, so the first r repeats of one run are an R = r run). Usage:

    python benchmarks/repeats.py --counts 64:8,16:4,0:8 --repeats 5 --out bench-out/repeats
    python benchmarks/repeats.py --model t2i --counts 64:8,0:4 --repeats 3 --out bench-out/repeats_t2i
    python benchmarks/repeats.py --counts 64:8,16:4,0:8 --repeats 5 --out bench-out/repeats --analyse
    python benchmarks/repeats.py --cost --counts 64:4,0:2 --repeats 3 --max-steps 500 --out bench-out/repeats_cost
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score

from invmm import measure, preset
from invmm.data.images import ImageItem
from invmm.records import summarise
from invmm.repeats import median_score, rep_score
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images

INF_RANK = 1e12  # +inf (not reproduced) ranks after every finite score


def finite_or_big(x: float) -> float:
    return x if math.isfinite(x) else INF_RANK


def auc_top_vs_heldout(levels: list[int], scores: list[float]) -> float:
    top = max(levels)
    pairs = [(int(lv == top), -finite_or_big(s)) for lv, s in zip(levels, scores) if lv in (top, 0)]
    return float(roc_auc_score([p[0] for p in pairs], [p[1] for p in pairs]))


def tau_pairs(per_repeat: np.ndarray) -> list[float]:
    """Kendall tau-b between the rankings of every two repeats; inf ties with inf. NaN when one ranking is
    constant (every image inf, say), which is left out."""
    taus = []
    for a, b in itertools.combinations(range(per_repeat.shape[1]), 2):
        t = kendalltau(per_repeat[:, a], per_repeat[:, b]).statistic
        if not math.isnan(t):
            taus.append(float(t))
    return taus


def disjoint_taus(per_repeat: np.ndarray, r: int) -> list[float]:
    """Kendall tau between the image rankings by the medians of every two disjoint sets of r repeats."""
    n = per_repeat.shape[1]
    taus = []
    for a in itertools.combinations(range(n), r):
        for b in itertools.combinations([i for i in range(n) if i not in a], r):
            if a > b:
                continue  # each unordered pair of sets once
            ma = [finite_or_big(median_score(row[list(a)])) for row in per_repeat]
            mb = [finite_or_big(median_score(row[list(b)])) for row in per_repeat]
            t = kendalltau(ma, mb).statistic
            if not math.isnan(t):
                taus.append(float(t))
    return taus


def setup(args):
    t2i = args.model == "t2i"
    model = shipped_digits_t2i_model() if t2i else shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    # The t2i model runs in known-caption mode (the training caption, e.g. "a handwritten seven").
    items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"] if t2i else None) for e, p in zip(chosen, paths)]
    level = {e["id"]: e["copies"] for e in chosen}
    cfg = preset("sd" if t2i else "ddpm", similarity="pixel", max_steps=args.max_steps, seed=args.seed)
    return model, items, level, cfg


def cost(args) -> None:
    """Wall time of one run with R repeats against R separate single runs (seeds 0..R-1) on the same images."""
    model, items, _, cfg = setup(args)
    t0 = time.perf_counter()
    measure(str(model), items, cfg, batch_images=args.batch_images, repeats=args.repeats)
    together = time.perf_counter() - t0
    separate = []
    for seed in range(args.repeats):
        t0 = time.perf_counter()
        measure(str(model), items, cfg.replace(seed=seed), batch_images=args.batch_images)
        separate.append(time.perf_counter() - t0)
    print(f"\n{len(items)} images, budget {args.max_steps}, --batch-images {args.batch_images}\n")
    print("| run | inversions | wall s |\n|---|---|---|")
    print(f"| one run, R = {args.repeats} | {len(items) * args.repeats} | {together:.0f} |")
    print(f"| {args.repeats} separate runs, R = 1 | {len(items) * args.repeats} | {sum(separate):.0f} "
          f"({', '.join(f'{s:.0f}' for s in separate)}) |")
    print(f"\nratio separate / together: {sum(separate) / together:.2f}")
    (args.out / "cost.json").write_text(json.dumps({"together_s": together, "separate_s": separate}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("digits", "t2i"), default="digits")
    ap.add_argument("--counts", default="64:8,16:4,0:8", help="level:n,...; level 0 = held out")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost", action="store_true", help="only the wall-time comparison")
    ap.add_argument("--analyse", action="store_true", help="print the tables of the finished run in OUT/run")
    ap.add_argument("--out", type=Path, default=Path("bench-out/repeats"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cost:
        return cost(args)

    model, items, level, cfg = setup(args)
    t0 = time.perf_counter()
    if args.analyse:  # the tables again, from a finished run folder
        results = summarise(Ledger(args.out / "run").read())
    else:
        results = measure(str(model), items, cfg, out=args.out / "run", batch_images=args.batch_images,
                          repeats=args.repeats,
                          on_result=lambda r: print(f"  {r.id} r{r.repeat}: score {r.score:.4f} steps {r.steps}",
                                                    flush=True))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.status == "ok"]
    R = args.repeats
    per_repeat = np.array([[rep_score(x) for x in sorted(r.repeats, key=lambda x: x["repeat"])] for r in ok])
    levels = [level[r.id] for r in ok]

    print(f"\nmodel: {model}\n{len(ok)} images x {R} repeats, budget {args.max_steps}, seed {args.seed}, "
          f"--batch-images {args.batch_images}, {'re-analysed' if args.analyse else f'wall {wall:.0f} s'}\n")
    print("| image | copies | reproduced | median | interval (coverage) | finite scores | CV of finite scores |")
    print("|---|---|---|---|---|---|---|")
    cvs: dict[int, list[float]] = {}
    for r, lv, row in sorted(zip(ok, levels, per_repeat), key=lambda t: (-t[1], finite_or_big(t[0].score))):
        fin = [x for x in row if math.isfinite(x)]
        cv = statistics.stdev(fin) / statistics.mean(fin) if len(fin) >= 2 else math.nan
        if not math.isnan(cv):
            cvs.setdefault(lv, []).append(cv)
        iv = "-" if r.score_low is None else f"[{r.score_low:.3f}, {r.score_high:.3f}] ({r.interval_coverage:.0%})"
        print(f"| {r.id} | {lv or 'held out'} | {r.successes}/{R} | {r.score:.3f} | {iv} | "
              f"{', '.join(f'{x:.3f}' for x in row if math.isfinite(x)) or '-'} | "
              f"{'-' if math.isnan(cv) else f'{cv:.2f}'} |")

    summary = {"wall_s": wall, "repeats": R, "max_steps": args.max_steps, "n": len(ok), "model": str(model)}
    print("\n| copies | images | success rate (all repeats) | images with 0 < k < R | median CV of finite scores |")
    print("|---|---|---|---|---|")
    for lv in sorted(set(levels), reverse=True):
        rows = per_repeat[[i for i, x in enumerate(levels) if x == lv]]
        k = np.isfinite(rows).sum(1)
        partial = int(((k > 0) & (k < R)).sum())
        med_cv = statistics.median(cvs[lv]) if cvs.get(lv) else math.nan
        print(f"| {lv or 'held out'} | {len(rows)} | {int(k.sum())}/{rows.size} | {partial} | "
              f"{'-' if math.isnan(med_cv) else f'{med_cv:.2f}'} |")
        summary[f"level_{lv}"] = {"successes": int(k.sum()), "inversions": int(rows.size), "partial": partial,
                                  "median_cv": med_cv}

    ranks = np.vectorize(finite_or_big)(per_repeat)
    top = max(levels)
    print("\nKendall tau between the image rankings of two repeats (tau-b, inf tied last; mean [min, max] over "
          f"{R * (R - 1) // 2} pairs):")
    for name, rows in (("all images", list(range(len(ok)))),
                       ("training images only", [i for i, x in enumerate(levels) if x > 0]),
                       (f"{top}-copy images only", [i for i, x in enumerate(levels) if x == top])):
        taus = tau_pairs(ranks[rows])
        if taus:
            print(f"- {name} ({len(rows)}): {statistics.mean(taus):.3f} [{min(taus):.3f}, {max(taus):.3f}]")
            summary[f"tau_{name}"] = taus
    # Rankings from disjoint sets of repeats (independent, unlike a subset against all R): how well the
    # median of r repeats reproduces itself.
    print("\nKendall tau between rankings by the medians of two disjoint sets of r repeats (mean [min, max]):")
    for name, rows in (("all images", list(range(len(ok)))),
                       ("training images only", [i for i, x in enumerate(levels) if x > 0]),
                       (f"{top}-copy images only", [i for i, x in enumerate(levels) if x == top])):
        for r in range(1, R // 2 + 1):
            taus = disjoint_taus(per_repeat[rows], r)
            if taus:
                print(f"- {name} ({len(rows)}), r = {r}: {statistics.mean(taus):.3f} [{min(taus):.3f}, "
                      f"{max(taus):.3f}] over {len(taus)} pairs of sets")
                summary[f"disjoint_tau_{name}_r{r}"] = taus
    # Rankings by the median of r repeats, against the median of all R: how fast the ranking settles.
    full = [median_score(row) for row in per_repeat]
    # The median is the summary the tool reports; the minimum (the best inversion any repeat found, i.e.
    # "reproduced at least once") is shown beside it as a detector.
    print("\n| repeats used | AUC top vs held out, median of r (mean [min, max] over subsets) | AUC, minimum of r | "
          "Kendall tau vs all R (median) |")
    print("|---|---|---|---|")
    for r in range(1, R + 1, 2 if R > 2 else 1):
        subsets = list(itertools.combinations(range(R), r))
        aucs, mins, taus = [], [], []
        for sub in subsets:
            med = [median_score(row[list(sub)]) for row in per_repeat]
            aucs.append(auc_top_vs_heldout(levels, med))
            mins.append(auc_top_vs_heldout(levels, [float(min(row[list(sub)])) for row in per_repeat]))
            taus.append(kendalltau([finite_or_big(x) for x in med], [finite_or_big(x) for x in full]).statistic)
        print(f"| {r} | {statistics.mean(aucs):.3f} [{min(aucs):.3f}, {max(aucs):.3f}] over {len(subsets)} | "
              f"{statistics.mean(mins):.3f} [{min(mins):.3f}, {max(mins):.3f}] | "
              f"{statistics.mean(taus):.3f} [{min(taus):.3f}, {max(taus):.3f}] |")
        summary[f"auc_r{r}"] = aucs
        summary[f"auc_min_r{r}"] = mins
        summary[f"tau_vs_full_r{r}"] = taus
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
