"""InvMM on the toy text-to-image digits model, known-caption mode: duplicated pairs vs held-out images.

Two modes on the same images, preset `sd` (guidance scales 1..7 at every check, the paper's DDIM grid) with
the pixel similarity: known caption ("a handwritten seven") and prompt inversion (no caption: soft
prompts learned with the noise). Prints per-level scores, ROC AUC of "most duplicated vs held out", the
guidance scale at which each success happened, and the decoded prompts of the inversion.

    python benchmarks/toy_t2i_auc.py --counts 64:8,0:8 --out bench-out/toy_t2i
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from invmm import measure, preset
from invmm.analysis.metrics import roc_metrics
from invmm.data.images import ImageItem
from invmm.zoo import shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def level_table(results, level, title: str, wall: float, budget: int) -> float:
    """Per duplication level: how many reproduced, the scores, the guidance scales of the successes; then the
    ROC AUC of the most duplicated level against held out (nan when --only left one group)."""
    rows = [(level[r.id], r) for r in results if r.status == "ok"]
    print(f"\n{title}; {len(rows)} images; budget {budget}; wall {wall:.0f} s\n")
    print("| copies | n | reproduced | median score | scores | guidance scales of successes |")
    print("|---|---|---|---|---|---|")
    for lv in sorted({lv for lv, _ in rows}, reverse=True):
        rs = [r for l2, r in rows if l2 == lv]
        scales = sorted(r.guidance_scale for r in rs if r.success)
        shown = ", ".join(f"{r.score:.3f}" for r in sorted(rs, key=lambda r: r.score) if r.success) or "-"
        print(f"| {lv if lv else 'held out'} | {len(rs)} | {sum(r.success for r in rs)} | "
              f"{statistics.median(r.score for r in rs):.4f} | {shown} | {scales} |")
    top = max(lv for lv, _ in rows)
    pair = [(lv == top, r.score) for lv, r in rows if lv in (top, 0)]
    if len({y for y, _ in pair}) < 2:
        return float("nan")
    auc = roc_metrics([int(y) for y, _ in pair], [s for _, s in pair], higher_is_better=False)["auc"]
    print(f"\nROC AUC, {top} copies vs held out ({title}): {auc:.3f}")
    return auc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--counts", default="64:8,0:8")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--modes", default="caption,inverted",
                    help="caption: known caption; inverted: prompt inversion (no caption), on the same images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/toy_t2i"))
    args = ap.parse_args()

    model = args.model or shipped_digits_t2i_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    level = {e["id"]: e["copies"] for e in chosen}
    cfg = preset("sd", similarity="pixel", max_steps=args.max_steps, seed=args.seed)
    summary = {"max_steps": args.max_steps, "n": len(chosen), "check_schedule": cfg.check_schedule}
    for mode in args.modes.split(","):
        known = mode == "caption"
        items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"] if known else None)
                 for e, p in zip(chosen, paths)]
        t0 = time.perf_counter()
        results = measure(str(model), items, cfg, out=args.out / mode, batch_images=args.batch_images,
                          on_result=lambda r: print(f"  {r.id} [{r.prompt_mode}]: score {r.score:.4f} steps {r.steps} "
                                                    f"min sim {r.min_similarity} scale {r.guidance_scale} "
                                                    f"prompt {r.prompt!r}", flush=True))
        wall = time.perf_counter() - t0
        title = "known caption" if known else "prompt inversion, no caption"
        summary[mode] = {"auc": level_table(results, level, title, wall, args.max_steps), "wall_s": wall,
                         "scores": {r.id: r.score for r in results}, "prompts": {r.id: r.prompt for r in results}}
        if not known:
            print("\ndecoded prompts (argmax token per position):")
            for r in results:
                caption = next(e["caption"] for e in chosen if e["id"] == r.id)
                print(f"  {r.id} ({level[r.id]} copies, caption {caption!r}): {r.prompt!r}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
