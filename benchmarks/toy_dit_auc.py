"""InvMM on the toy class-conditional DiT (digits; the class is the digit): duplicated images vs held out,
with the known class and with class inversion.

Two modes on the same images, preset `dit` (guidance scales 1..4 at every check, the paper's DDIM grid) with
the pixel similarity: known class (the digit) and class inversion (no class: a Gumbel-softmax distribution
over the 10 classes learned with the noise). Prints per-level scores, ROC AUC of "most duplicated vs held
out", the guidance scale of each success and, for inversion, the decoded class against the true one.

    python benchmarks/toy_dit_auc.py --counts 64:8,0:8 --out bench-out/toy_dit
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from toy_t2i_auc import level_table  # benchmarks/ is the script's own folder on sys.path

from invmm import measure, preset
from invmm.data.images import ImageItem
from invmm.zoo import shipped_digits_dit_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--counts", default="64:8,0:8")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--modes", default="known,inverted",
                    help="known: the digit as the class; inverted: class inversion (no class), on the same images")
    ap.add_argument("--tau", type=float, default=None, help="Gumbel-softmax temperature (default: the preset's, 2)")
    ap.add_argument("--only", default=None, help="comma-separated image ids: measure only these of the selection")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-out/toy_dit"))
    args = ap.parse_args()

    model = args.model or shipped_digits_dit_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    if args.only:
        chosen = [e for e in chosen if e["id"] in args.only.split(",")]
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    level = {e["id"]: e["copies"] for e in chosen}
    truth = {e["id"]: e["class"] for e in chosen}
    cfg = preset("dit", similarity="pixel", max_steps=args.max_steps, seed=args.seed, gumbel_tau=args.tau)
    summary = {"max_steps": args.max_steps, "n": len(chosen), "preset": cfg.to_json()}
    for mode in args.modes.split(","):
        known = mode == "known"
        items = [ImageItem(id=e["id"], path=str(p), class_label=str(e["class"]) if known else None)
                 for e, p in zip(chosen, paths)]
        t0 = time.perf_counter()
        results = measure(str(model), items, cfg, out=args.out / mode, batch_images=args.batch_images,
                          on_result=lambda r: print(f"  {r.id} [{r.class_mode}]: score {r.score:.4f} steps {r.steps} "
                                                    f"min sim {r.min_similarity} scale {r.guidance_scale} "
                                                    f"class {r.class_label} (true {truth[r.id]})", flush=True))
        wall = time.perf_counter() - t0
        title = "known class" if known else "class inversion, no class"
        summary[mode] = {"auc": level_table(results, level, title, wall, args.max_steps), "wall_s": wall,
                         "scores": {r.id: r.score for r in results},
                         "classes": {r.id: [r.class_label, truth[r.id]] for r in results}}
        if not known:
            hits = [r.class_label == truth[r.id] for r in results]
            print(f"\ndecoded class = true digit: {sum(hits)}/{len(hits)}")
            for lv in sorted(set(level.values()), reverse=True):
                rs = [r for r in results if level[r.id] == lv]
                print(f"  {lv if lv else 'held out'}: {sum(r.class_label == truth[r.id] for r in rs)}/{len(rs)} "
                      f"(reproduced: {sum(r.class_label == truth[r.id] for r in rs if r.success)}/"
                      f"{sum(r.success for r in rs)})")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
