"""How the step budget changes InvMM on the shipped toy digits model: AUC and reproduced images per budget.

One run at the largest budget gives every smaller one: the budget only decides when an image that has not
yet been reproduced stops (no learning-rate or lambda schedule depends on it; tests/test_repeats.py checks
that a run at a small budget equals the large run cut there). So an image's result at budget B is its
result at the largest budget when it was reproduced at step <= B, and inf otherwise. Usage:

    python benchmarks/budget_sensitivity.py --counts 64:8,16:4,4:4,0:8 --budgets 500,1000,2000,4000 \
        --out bench-out/budget
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from invmm import measure, preset
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def at_budget(score: float, steps: int, budget: int) -> float:
    return score if math.isfinite(score) and steps <= budget else math.inf


def auc_top_vs_heldout(levels: list[int], scores: list[float]) -> float:
    top = max(levels)
    y = np.array([1 if lv == top else 0 for lv in levels if lv in (top, 0)])
    # Lower = more memorized; inf (not reproduced) ranks below every finite score.
    s = np.array([-sc if math.isfinite(sc) else -1e12 for lv, sc in zip(levels, scores) if lv in (top, 0)])
    return float(roc_auc_score(y, s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="64:8,16:4,4:4,0:8", help="level:n,...; level 0 = held out")
    ap.add_argument("--budgets", default="500,1000,2000,4000")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/budget"))
    args = ap.parse_args()
    budgets = sorted(int(b) for b in args.budgets.split(","))

    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    level = {e["id"]: e["copies"] for e in chosen}
    paths = export_images(manifest, args.out / "inputs", ids=list(level))
    cfg = preset("ddpm", similarity="pixel", max_steps=budgets[-1], seed=args.seed)
    t0 = time.perf_counter()
    results = measure(str(model), paths, cfg, out=args.out / "run", batch_images=args.batch_images,
                      on_result=lambda r: print(f"  {r.id}: score {r.score:.4f} steps {r.steps}", flush=True))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.status == "ok"]
    levels = [level[Path(r.id).stem] for r in ok]
    groups = sorted(set(levels), reverse=True)

    print(f"\nmodel: {model}\nimages: {len(ok)}, one run at {budgets[-1]} steps, seed {args.seed}, wall {wall:.0f} s\n")
    print("| budget | AUC top vs held out | " + " | ".join(f"{g if g else 'held out'} reproduced" for g in groups)
          + " | median score, top group |")
    print("|---|---|" + "---|" * len(groups) + "---|")
    table = []
    for b in budgets:
        scores = [at_budget(r.score, r.steps, b) for r in ok]
        counts = {g: sum(math.isfinite(s) for s, lv in zip(scores, levels) if lv == g) for g in groups}
        n = {g: levels.count(g) for g in groups}
        top = sorted(s for s, lv in zip(scores, levels) if lv == groups[0])
        med = float(np.median(top)) if top else math.nan
        auc = auc_top_vs_heldout(levels, scores)
        table.append({"budget": b, "auc": auc, "reproduced": counts, "median_top": med})
        print(f"| {b} | {auc:.3f} | " + " | ".join(f"{counts[g]}/{n[g]}" for g in groups) + f" | {med:.3f} |")
    steps = {str(g): sorted(r.steps for r, lv in zip(ok, levels) if lv == g and r.success) for g in groups}
    print("\nsuccess steps per group (at the largest budget):", json.dumps(steps))
    (args.out / "summary.json").write_text(json.dumps({"wall_s": wall, "seed": args.seed, "table": table,
                                                        "success_steps": steps}, indent=1))


if __name__ == "__main__":
    main()
