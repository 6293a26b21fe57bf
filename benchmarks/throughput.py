"""Images per hour with images inverted together (--batch-images 8) vs one at a time, same seeds.

Also checks that batching does not change decisions: the fraction of images with the same success
step and, for those, the largest relative score difference. Usage:

    python benchmarks/throughput.py --counts 64:4,1:2,0:2 --max-steps 400 --out bench-out/throughput
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from invmm import measure, preset
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="64:4,1:2,0:2")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/throughput"))
    args = ap.parse_args()

    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    cfg = preset("ddpm", similarity="pixel", max_steps=args.max_steps, seed=args.seed)
    runs = {}
    for k in (args.batch, 1):
        t0 = time.perf_counter()
        res = measure(str(model), paths, cfg, out=args.out / f"k{k}", batch_images=k)
        runs[k] = (time.perf_counter() - t0, {r.id: r for r in res})
    (tb, rb), (t1, r1) = runs[args.batch], runs[1]
    same = [i for i in rb if rb[i].steps == r1[i].steps and rb[i].success == r1[i].success]
    rel = [abs(rb[i].score - r1[i].score) / abs(r1[i].score) for i in same
           if math.isfinite(r1[i].score) and r1[i].score != 0]
    n = len(paths)
    summary = {
        "n_images": n, "max_steps": args.max_steps,
        f"k{args.batch}_s": tb, "k1_s": t1,
        f"k{args.batch}_images_per_hour": n / tb * 3600, "k1_images_per_hour": n / t1 * 3600,
        "speedup": t1 / tb, "same_decision_fraction": len(same) / n,
        "max_rel_score_diff": max(rel) if rel else 0.0,
        "total_steps": sum(r.steps for r in r1.values()),
    }
    print("| batch images | wall s | images/hour |\n|---|---|---|")
    print(f"| {args.batch} | {tb:.0f} | {n / tb * 3600:.0f} |\n| 1 | {t1:.0f} | {n / t1 * 3600:.0f} |")
    print(f"\nspeedup {t1 / tb:.2f}x; same success step for {len(same)}/{n} images; "
          f"max relative score difference among those {summary['max_rel_score_diff']:.2e}")
    for i in r1:
        print(f"  {i}: k=1 steps {r1[i].steps} score {r1[i].score:.5f} | k={args.batch} steps {rb[i].steps} "
              f"score {rb[i].score:.5f}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
