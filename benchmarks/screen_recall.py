"""Screening recall on the toy digits model: does a cheap scorer put the memorized digits in its top few %?

The dataset is all 1,797 scikit-learn digits: the toy model's 224 training digits (8 duplicated 64 times,
8 16 times, 8 4 times, 200 once), its 200 held-out digits, and the 1,373 it never saw. Each screen scorer
ranks them (most suspicious first); the table gives the share of 64-copy and 16-copy digits in the top 5%,
10% and 25%, and the cost of screen + InvMM on the kept part against InvMM on everything, with InvMM's
per-image seconds for an image never reproduced taken from --invmm-seconds (the measured all-held-out
audit of benchmarks/estimate_vs_audit.py).

    python benchmarks/screen_recall.py --out bench-out/screen --invmm-seconds 26.8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from PIL import Image

from invmm.data.datasets import load_dataset
from invmm.families import load_adapter
from invmm.runs.scores import score_dataset
from invmm.runs.screen import suspicion_order
from invmm.scorers import build_scorer
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import digits_uint8, export_images, load_manifest

FRACTIONS = (0.05, 0.10, 0.25)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scorers", default="loss,secmi,pia,noise_norm")
    ap.add_argument("--invmm-seconds", type=float, required=True,
                    help="InvMM wall seconds per image never reproduced (measured elsewhere)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/screen"))
    args = ap.parse_args()
    model = shipped_digits_model()
    manifest = load_manifest(model)
    data = args.out / "data"
    export_images(manifest, data)
    seen = {e["source_index"] for e in manifest["images"]}
    for i, px in enumerate(digits_uint8()):
        if i not in seen:
            Image.fromarray(px, mode="L").save(data / f"unseen-{i:04d}.png")
    copies = {e["id"]: e["copies"] for e in manifest["images"]}
    items = load_dataset(data)
    n = len(items)
    adapter = load_adapter(str(model))
    print(f"{n} digits; 64-copy {sum(c == 64 for c in copies.values())}, 16-copy "
          f"{sum(c == 16 for c in copies.values())}\n")
    print("| screen | seconds (all images) | " + " | ".join(f"64-copy in top {f:.0%}" for f in FRACTIONS) + " | "
          + " | ".join(f"16-copy in top {f:.0%}" for f in FRACTIONS) + " | cost at 10%: screen + InvMM vs InvMM "
          "on all |")
    print("|---|---|" + "---|" * (2 * len(FRACTIONS)) + "---|")
    summary = {"n": n}
    for name in args.scorers.split(","):
        scorer = build_scorer(name, adapter)
        t0 = time.perf_counter()
        records = score_dataset(adapter, load_dataset(data), [scorer], args.out / f"scores-{name}")
        secs = time.perf_counter() - t0
        order = [Path(r.id).stem for r in suspicion_order(records, scorer.higher_is_better)]
        row = {}
        for level in (64, 16):
            members = {i for i, c in copies.items() if c == level}
            for f in FRACTIONS:
                top = set(order[: math.ceil(f * n)])
                row[f"{level}@{f}"] = len(members & top) / len(members)
        kept = math.ceil(0.10 * n)
        staged = secs + kept * args.invmm_seconds
        full = n * args.invmm_seconds
        print(f"| {name} | {secs:.0f} | " + " | ".join(f"{row[f'64@{f}']:.0%}" for f in FRACTIONS) + " | "
              + " | ".join(f"{row[f'16@{f}']:.0%}" for f in FRACTIONS)
              + f" | {staged / 3600:.2f} h vs {full / 3600:.2f} h ({staged / full:.0%}) |", flush=True)
        summary[name] = {"seconds": secs, "recall": row, "staged_h": staged / 3600, "full_h": full / 3600}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
