"""Generate-and-compare on the toy digits model: which training images does plain sampling reproduce?

Draws N samples from N(0, I), runs DDIM, and matches each sample to its nearest toy image (train or
held out) by the pixel similarity. Prints, per duplication level, the share of samples that are copies
(similarity >= threshold) and how many distinct images of the level were copied.

    python benchmarks/toy_memorization.py --n 512 [--model DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from invmm.config import PIXEL_THRESHOLD
from invmm.families import load_adapter
from invmm.functional import concordance_correlation
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import digits_uint8, load_manifest, to_model_space


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = args.model or shipped_digits_model()
    manifest = load_manifest(model)
    adapter = load_adapter(str(model))
    entries = manifest["images"]
    ref = to_model_space(digits_uint8()[[e["source_index"] for e in entries]]).flatten(1)
    g = torch.Generator().manual_seed(args.seed)
    samples = torch.cat([adapter.generate(torch.randn(128, 1, 8, 8, generator=g), steps=args.steps)
                         for _ in range(-(-args.n // 128))])[: args.n].flatten(1)
    best_sim, best_idx = [], []
    for s in samples:
        c = concordance_correlation(ref, s[None].expand_as(ref))
        best_sim.append(c.max().item())
        best_idx.append(int(c.argmax()))
    levels = sorted({e["copies"] for e in entries}, reverse=True)
    print(f"model {model}; {args.n} samples, DDIM {args.steps}; copy = similarity >= {PIXEL_THRESHOLD}\n")
    print("| copies | images | share of samples copying one | distinct images copied |")
    print("|---|---|---|---|")
    for lv in levels:
        idx = {i for i, e in enumerate(entries) if e["copies"] == lv}
        hits = [b for b, s in zip(best_idx, best_sim) if b in idx and s >= PIXEL_THRESHOLD]
        print(f"| {lv if lv else 'held out'} | {len(idx)} | {len(hits) / args.n:.3f} | {len(set(hits))} |")
    novel = sum(s < PIXEL_THRESHOLD for s in best_sim)
    print(f"\nsamples that copy no toy image: {novel / args.n:.3f}")


if __name__ == "__main__":
    main()
