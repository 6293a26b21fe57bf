"""One memorized image measured whole and under a quarter mask: how a masked score relates to a whole-image one.

The shipped toy digits model's 64-copy digits (memorized whole), each inverted on the whole image and under each
of the four quarter masks (4x4 of 8x8, 25% of the image), same seed and settings. The KL is averaged over every
dimension while under a mask only the masked cells are pulled to the target, so the two scales differ; this prints
both, and their ratio per image. Prints markdown tables.

    python benchmarks/masked_vs_whole.py --out bench-out/masked_vs_whole
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invmm.config import default_config
from invmm.data.datasets import load_dataset
from invmm.families import load_adapter
from invmm.records import summarise
from invmm.runs.audit import audit
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, select_images

QUARTERS = {"top left": (slice(0, 4), slice(0, 4)), "top right": (slice(0, 4), slice(4, 8)),
            "bottom left": (slice(4, 8), slice(0, 4)), "bottom right": (slice(4, 8), slice(4, 8))}


def fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/masked_vs_whole"))
    ap.add_argument("--images", type=int, default=8, help="64-copy digits to measure")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--batch-images", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(args.out, ignore_errors=True)
    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, {64: args.images})
    paths = export_images(manifest, args.out / "images", ids=[e["id"] for e in chosen])
    lines = ["path,mask"] + [f"images/{p.name}," for p in paths]
    for name, (rows, cols) in QUARTERS.items():
        mask = np.zeros((8, 8), np.uint8)
        mask[rows, cols] = 255
        file = f"{name.replace(' ', '_')}.png"
        Image.fromarray(mask).save(args.out / file)
        lines += [f"images/{p.name},{file}" for p in paths]
    # One manifest, each image once whole and once per quarter (ids: the path plus the mask, made unique below).
    rows_csv = ["id," + lines[0]] + [f"{ln.split(',')[0]}|{ln.split(',')[1] or 'whole'},{ln}" for ln in lines[1:]]
    (args.out / "manifest.csv").write_text("\n".join(rows_csv) + "\n")
    adapter = load_adapter(str(model))
    config = default_config(adapter, similarity="pixel", max_steps=args.max_steps, sampler_steps=args.sampler_steps,
                            map_samples=0)
    t0 = time.perf_counter()
    audit(str(model), load_dataset(args.out / "manifest.csv"), config, args.out / "run", adapter=adapter,
          batch_images=args.batch_images)
    seconds = time.perf_counter() - t0
    results = {r.id: r for r in summarise(Ledger(args.out / "run").read())}
    print(f"shipped toy digits model, {len(paths)} 64-copy digits, whole and under each quarter mask (25% of the "
          f"image); {args.max_steps} steps, DDIM {args.sampler_steps} checks, pixel similarity (beta "
          f"{config.beta}), seed {config.seed}; {len(results)} inversions in {seconds:.0f} s\n")
    head = ["image", "whole (steps)"] + [f"{q} (steps)" for q in QUARTERS] + ["masked median / whole"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    ratios, masked_all, whole_all = [], [], []
    for p in paths:
        w = results[f"images/{p.name}|whole"]
        row = [p.stem, f"{fmt(w.score)} ({w.steps})"]
        masked = []
        for q in QUARTERS:
            r = results[f"images/{p.name}|{q.replace(' ', '_')}.png"]
            row.append(f"{fmt(r.score)} ({r.steps})")
            masked.append(r.score)
        finite = [x for x in masked if math.isfinite(x)]
        med = statistics.median(finite) if finite else math.inf
        ratio = med / w.score if math.isfinite(med) and math.isfinite(w.score) and w.score > 0 else math.nan
        if math.isfinite(ratio):
            ratios.append(ratio)
        masked_all += finite
        whole_all += [w.score] if math.isfinite(w.score) else []
        row.append("-" if math.isnan(ratio) else f"{ratio:.2f}")
        print("| " + " | ".join(row) + " |")
    print(f"\nwhole: median {fmt(statistics.median(whole_all)) if whole_all else '-'} over {len(whole_all)} "
          f"reproduced; quarter masks: median {fmt(statistics.median(masked_all)) if masked_all else '-'} over "
          f"{len(masked_all)} reproduced of {len(paths) * len(QUARTERS)}; masked/whole ratio per image: median "
          f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}" if ratios else "")


if __name__ == "__main__":
    main()
