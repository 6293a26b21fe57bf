"""SecMI's walk before and after issue 21, on the shipped toy models: AUCs of both and how alike they rank.

before: invmm's walk until issue 21, the clean image at alpha_bar = 1, DDIM inversion over 0, k, ..., t_sec, the
        round trip t_sec -> t_sec + k -> t_sec (re-typed here, as it was);
after:  the authors' secmia.py walk (scorers/secmi.py): the clean image as x at t = 0, inversion over
        range(0, t_sec, k)[1:], the round trip t_sec - k -> t_sec -> t_sec - k.
Both at t_sec = 100, k = 10, on the same images and captions as benchmarks/scorers_table.py.

    python benchmarks/secmi_walk.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from scorers_table import labelled_items
from sklearn.metrics import roc_auc_score

from invmm.data.images import load_image
from invmm.families import load_adapter
from invmm.scorers import SecMIScorer
from invmm.scorers.secmi import ddim_transfer
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model


def before(adapter, x0, cond, t_sec: int, k: int) -> torch.Tensor:
    def transfer(x, t_from, t_to):  # t_from = -1: the clean image, alpha_bar = 1, eps taken at timestep 0
        if t_from >= 0:
            return ddim_transfer(adapter, x, t_from, t_to, cond)
        eps = adapter.eps_prediction(x, torch.zeros(len(x), dtype=torch.long), cond)
        a = adapter.alpha_bar(t_to)
        return a.sqrt() * x + (1 - a).sqrt() * eps

    x, t = x0, -1
    for t_next in range(0, t_sec + 1, k):
        x, t = transfer(x, t, t_next), t_next
    back = transfer(transfer(x, t_sec, t_sec + k), t_sec + k, t_sec)
    return (back - x).pow(2).flatten(1).sum(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--t-sec", type=int, default=100)
    ap.add_argument("--stride", type=int, default=10)
    args = ap.parse_args()
    parts = {"digits": (shipped_digits_model(), {64: 8, 1: 200, 0: 200}),
             "t2i": (shipped_digits_t2i_model(), {64: 8, 1: 64, 0: 64})}
    print("| model | walk | 64 copies vs held out: AUC | members vs held out: AUC |\n|---|---|---|---|")
    for name, (model, counts) in parts.items():
        adapter = load_adapter(str(model))
        items = labelled_items(model, counts, Path(tempfile.mkdtemp()))
        loaded = [load_image(it, mode=adapter.image_mode, size=adapter.image_size) for it in items]
        x = torch.stack([it.pixels for it in loaded])
        captions = [it.caption for it in loaded]
        after_scores = np.array(SecMIScorer(adapter, t_sec=args.t_sec, stride=args.stride).score(
            x, [it.id for it in loaded], captions))
        with torch.no_grad():
            cond = adapter.prompt_embeddings([c or "" for c in captions]) if adapter.conditional else None
            before_scores = before(adapter, adapter.encode(x), cond, args.t_sec, args.stride).numpy()
        labels = np.array([it.label for it in loaded])
        for walk, s in (("before", before_scores), ("after", after_scores)):
            aucs = []
            for pos in ("dup64", "single"):
                keep = np.isin(labels, [pos, "heldout"])
                aucs.append(roc_auc_score(labels[keep] == pos, -s[keep]))  # lower = member
            print(f"| {name} | {walk} | {aucs[0]:.3f} | {aucs[1]:.3f} |")
        rho = spearmanr(before_scores, after_scores).statistic
        print(f"| {name} | Spearman rho between the two walks' scores over {len(loaded)} images | {rho:.3f} | |",
              flush=True)


if __name__ == "__main__":
    main()
