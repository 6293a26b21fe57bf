"""InvMM on the toy text-to-image digits model, known-caption mode: duplicated pairs vs held-out images.

Each image is measured with its caption ("a handwritten seven"), preset `sd` (guidance scales 1..7 at
every check) with the pixel similarity. Prints per-level scores, ROC AUC of "most duplicated vs held
out" and the guidance scale at which each success happened. Then, unless --no-inversion, runs prompt
inversion (no caption) end to end on a few images and prints the decoded prompts.

    python benchmarks/toy_t2i_auc.py --counts 64:8,0:8 --out bench-out/toy_t2i
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from invmm import measure, preset
from invmm.images import ImageItem
from invmm.zoo import shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--counts", default="64:8,0:8")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--inversion-images", type=int, default=2)
    ap.add_argument("--inversion-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/toy_t2i"))
    args = ap.parse_args()

    model = args.model or shipped_digits_t2i_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"]) for e, p in zip(chosen, paths)]
    level = {e["id"]: e["copies"] for e in chosen}
    cfg = preset("sd", similarity="pixel", max_steps=args.max_steps, seed=args.seed)
    t0 = time.perf_counter()
    results = measure(str(model), items, cfg, out=args.out / "caption", batch_images=args.batch_images,
                      on_result=lambda r: print(f"  {r.id} ({r.caption}): score {r.score:.4f} steps {r.steps} "
                                                f"scale {r.guidance_scale}", flush=True))
    wall = time.perf_counter() - t0
    rows = [(level[r.id], r) for r in results if r.status == "ok"]
    print(f"\nmodel {model}; known caption; {len(rows)} images; budget {args.max_steps}; wall {wall:.0f} s\n")
    print("| copies | n | reproduced | median score | guidance scales of successes |\n|---|---|---|---|---|")
    for lv in sorted({lv for lv, _ in rows}, reverse=True):
        rs = [r for l2, r in rows if l2 == lv]
        scales = sorted(r.guidance_scale for r in rs if r.success)
        print(f"| {lv if lv else 'held out'} | {len(rs)} | {sum(r.success for r in rs)} | "
              f"{statistics.median(r.score for r in rs):.4f} | {scales} |")
    top = max(lv for lv, _ in rows)
    pair = [(lv == top, r.score) for lv, r in rows if lv in (top, 0)]
    auc = roc_auc_score([int(y) for y, _ in pair], [-s if math.isfinite(s) else -1e12 for _, s in pair])
    print(f"\nROC AUC, {top} copies vs held out (known caption): {auc:.3f}")
    summary = {"auc": auc, "wall_s": wall, "n": len(rows), "max_steps": args.max_steps}

    if args.inversion_images:
        top_items = [ImageItem(id=it.id, path=it.path) for it in items if level[it.id] == top]
        inv = top_items[: args.inversion_images]
        cfg_inv = cfg.replace(max_steps=args.inversion_steps)
        t0 = time.perf_counter()
        inv_results = measure(str(model), inv, cfg_inv, out=args.out / "inverted", batch_images=len(inv))
        inv_wall = time.perf_counter() - t0
        print(f"\nprompt inversion (no caption), {len(inv)} images, budget {args.inversion_steps}: {inv_wall:.0f} s")
        for r in inv_results:
            print(f"  {r.id}: score {r.score:.4f} steps {r.steps} success {r.success} min sim {r.min_similarity} "
                  f"decoded prompt {r.prompt!r}")
        summary["inversion_wall_s"] = inv_wall
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
