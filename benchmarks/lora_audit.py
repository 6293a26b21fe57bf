"""Base vs LoRA fine-tune on the toy text-to-image model: what the fine-tune made reproducible.

The images come from the LoRA's manifest (zoo/digits_t2i_lora, or `--lora DIR` from `invmm zoo train-lora`):
digits the base model never saw, planted in the fine-tuning set many times ("repeated") or once, and
held out from both. Each is inverted with its fine-tuning caption (known-caption mode, sd preset, pixel
similarity) on the base model and on base + LoRA, into two run folders that `invmm compare` reads.

    python benchmarks/lora_audit.py --counts 32:8,1:4,0:8 --out bench-out/lora
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from invmm import measure
from invmm.analysis.compare import compare_runs, format_comparison
from invmm.analysis.metrics import roc_metrics
from invmm.config import default_config
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.lora import LoraSpec
from invmm.zoo import shipped_digits_lora, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def auc(pos: list[float], neg: list[float]) -> float:
    """Lower score = more memorized; inf ranks below every finite score."""
    return roc_metrics([1] * len(pos) + [0] * len(neg), pos + neg, higher_is_better=False)["auc"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora", type=Path, default=None, help="LoRA folder with manifest.json (default: shipped)")
    ap.add_argument("--counts", default="32:8,1:4,0:8", help="copies:n,... from the LoRA manifest; 0 = held out")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench-out/lora"))
    args = ap.parse_args()
    lora = args.lora or shipped_digits_lora()
    manifest = load_manifest(lora)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    copies = {e["id"]: e["copies"] for e in chosen}
    paths = export_images(manifest, args.out / "inputs", ids=list(copies))
    items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"]) for e, p in zip(chosen, paths)]
    base_model = shipped_digits_t2i_model()

    runs, walls = {}, {}
    for name, loras in (("base", []), ("lora", [LoraSpec(str(lora), 1.0)])):
        adapter = load_adapter(str(base_model), loras=loras)
        cfg = default_config(adapter, similarity="pixel")
        t0 = time.perf_counter()
        res = measure(adapter, [ImageItem(id=i.id, path=i.path, caption=i.caption) for i in items], cfg,
                      out=args.out / name, batch_images=args.batch_images)
        walls[name] = time.perf_counter() - t0
        runs[name] = {r.id: r for r in res}
        print(f"{name}: {walls[name]:.0f} s", flush=True)

    top = max(copies.values())
    print(f"\n{len(items)} images ({args.counts}), preset {cfg.preset}, known captions, default budget, "
          f"--batch-images {args.batch_images}")
    print(f"\n| model | planted x{top} reproduced | planted x1 reproduced | held out reproduced | "
          f"AUC x{top} vs held out | AUC x1 vs held out | wall s per image |")
    print("|---|---|---|---|---|---|---|")
    out = {"walls": walls}
    for name, res in runs.items():
        group = {lv: [res[i].score for i in copies if copies[i] == lv] for lv in sorted(set(copies.values()))}
        rep = {lv: sum(math.isfinite(s) for s in v) for lv, v in group.items()}
        a_top = auc(group[top], group[0])
        a_one = auc(group[1], group[0]) if 1 in group else math.nan
        print(f"| {name} | {rep[top]}/{len(group[top])} | {rep.get(1, 0)}/{len(group.get(1, []))} | "
              f"{rep[0]}/{len(group[0])} | {a_top:.3f} | {a_one:.3f} | {walls[name] / len(items):.1f} |")
        out[name] = {"auc_top": a_top, "auc_once": a_one, "reproduced": rep,
                     "scores": {i: (None if math.isinf(r.score) else r.score) for i, r in res.items()}}
    comparison = compare_runs(args.out / "base", args.out / "lora")
    print("\n" + format_comparison(comparison))
    out["counts"] = comparison.counts()
    print(f"\nwall ratio LoRA / base: {walls['lora'] / walls['base']:.2f}")
    (args.out / "summary.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
