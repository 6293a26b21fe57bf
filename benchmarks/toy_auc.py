"""InvMM on the shipped toy digits model: does it separate duplicated training images from held-out ones?

Prints, as markdown: per duplication level the median score and how many were reproduced, ROC AUC of
"most duplicated vs held out" (score = -InvMM, +inf ranked last), and Spearman's rho between
duplication level and score. Usage:

    python benchmarks/toy_auc.py --counts 64:8,16:4,4:4,1:8,0:8 --out bench-out/toy_auc
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from invmm import measure, preset
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="64:8,16:4,4:4,1:8,0:8", help="level:n,...; level 0 = held out")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/toy_auc"))
    args = ap.parse_args()

    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    level = {e["id"]: e["copies"] for e in chosen}
    paths = export_images(manifest, args.out / "inputs", ids=list(level))
    cfg = preset("ddpm", similarity="pixel", max_steps=args.max_steps, seed=args.seed)
    t0 = time.perf_counter()
    results = measure(str(model), paths, cfg, out=args.out / "run", batch_images=args.batch_images,
                      on_result=lambda r: print(f"  {r.id}: score {r.score:.4f} steps {r.steps}", flush=True))
    wall = time.perf_counter() - t0
    rows = [(level[Path(r.id).stem], r.score, r.steps) for r in results if r.status == "ok"]

    print(f"\nmodel: {model}\nimages: {len(rows)}, budget {args.max_steps} steps, wall {wall:.0f} s\n")
    print("| copies | n | reproduced | median score | scores |")
    print("|---|---|---|---|---|")
    for lv in sorted({lv for lv, _, _ in rows}, reverse=True):
        s = sorted(sc for l2, sc, _ in rows if l2 == lv)
        shown = ", ".join("inf" if math.isinf(x) else f"{x:.3f}" for x in s)
        print(f"| {lv if lv else 'held out'} | {len(s)} | {sum(map(math.isfinite, s))} | "
              f"{statistics.median(s):.4f} | {shown} |")
    top = max(lv for lv, _, _ in rows)
    pair = [(1 if lv == top else 0, sc) for lv, sc, _ in rows if lv in (top, 0)]
    y = np.array([p[0] for p in pair])
    # Lower score = more memorized; +inf (never reproduced) must rank below every finite score.
    s = np.array([-p[1] if math.isfinite(p[1]) else -1e12 for p in pair])
    auc = roc_auc_score(y, s)
    train_rows = [(lv, sc) for lv, sc, _ in rows if lv > 0]
    rho_train = spearmanr([lv for lv, _ in train_rows], [sc for _, sc in train_rows]).statistic
    rho_all = spearmanr([lv for lv, _, _ in rows], [sc for _, sc, _ in rows]).statistic
    summary = {"auc_top_vs_heldout": auc, "spearman_train_levels": rho_train, "spearman_with_heldout": rho_all,
               "wall_s": wall, "n": len(rows), "max_steps": args.max_steps}
    print(f"\nROC AUC, {top} copies vs held out: {auc:.3f}")
    print(f"Spearman rho(copies, score), training images only: {rho_train:.3f}")
    print(f"Spearman rho(copies, score), held out as 0 copies: {rho_all:.3f}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
