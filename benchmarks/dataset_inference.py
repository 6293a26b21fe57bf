"""Dataset inference (invmm dataset-test) on the shipped toy digits model: single-copy members vs held out.

Scores N single-copy training images and N held-out images with cheap scorers (one scores run folder, resumable),
then:
1. the p-value for n = 8, 16, 32, 64 suspect members against as many held-out images (median and range over
   random subsets of the n images);
2. the null: the held-out images split at random into a "suspect" and a "reference" half, many times; the
   fraction of splits with p < alpha is the test's false-positive rate.

    python benchmarks/dataset_inference.py --scorers "loss;secmi;pia" --out bench-out/dataset_inference
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from invmm.analysis.dataset_inference import dataset_test, feature_matrix, set_features
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.runs.scores import read_run, read_scores, score_with_specs
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scorers", default="loss;secmi;pia")
    ap.add_argument("--n", type=int, default=64, help="single-copy members and held-out images to score")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--draws", type=int, default=20, help="random subsets per size")
    ap.add_argument("--null-splits", type=int, default=50, help="random halvings of the held-out images")
    ap.add_argument("--splits", type=int, default=50, help="fit/test splits inside each test")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-set-encoding", action="store_true",
                    help="encode +inf per set, as before issue 21 (wrong; for the before/after figure)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/dataset_inference"))
    args = ap.parse_args()

    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, {1: args.n, 0: args.n})
    paths = export_images(manifest, args.out / "inputs", ids=[e["id"] for e in chosen])
    items = [ImageItem(id=e["id"], path=str(p), label="member" if e["copies"] else "held out")
             for e, p in zip(chosen, paths)]
    t0 = time.perf_counter()
    score_with_specs(load_adapter(str(model)), items, args.scorers, args.out / "run", seed=args.seed)
    print(f"scored {len(items)} images with {args.scorers} in {time.perf_counter() - t0:.1f} s")

    stored = read_run(args.out / "run")["scorers"]
    names = sorted(stored)
    by_id: dict[str, dict] = {}
    for r in read_scores(args.out / "run"):
        by_id.setdefault(r.id, {})[r.scorer] = r.score
    higher = {n: stored[n]["higher_is_better"] for n in names}

    def scores(label, keep=None):
        ids = [it.id for it in items if it.label == label]
        ids = ids if keep is None else [ids[k] for k in keep]
        return {n: [by_id[i][n] for i in ids] for n in names}

    def features(a: dict, b: dict):
        # --per-set-encoding: the encoding before issue 21, for the before/after figure of the null's level
        if args.per_set_encoding:
            return feature_matrix(a, higher), feature_matrix(b, higher)
        return set_features(a, b, higher)
    rng = np.random.default_rng(args.seed)
    summary = {"scorers": names, "alpha": args.alpha, "splits": args.splits, "sizes": {}}
    print(f"\nscorers combined: {', '.join(names)}; {args.splits} fit/test splits per test; {args.draws} random "
          f"subsets per size\n")
    print("| suspect members | reference held out | median p-value | range over subsets | subsets with p < "
          f"{args.alpha} |\n|---|---|---|---|---|")
    n_members = sum(it.label == "member" for it in items)
    n_held = sum(it.label == "held out" for it in items)
    for n in map(int, args.sizes.split(",")):
        ps = []
        for d in range(args.draws):
            s, r = features(scores("member", rng.choice(n_members, n, replace=False)),
                            scores("held out", rng.choice(n_held, n, replace=False)))
            ps.append(dataset_test(s, r, n_splits=args.splits, seed=args.seed + d)[0])
        summary["sizes"][n] = ps
        print(f"| {n} | {n} | {np.median(ps):.3g} | {min(ps):.3g} - {max(ps):.3g} | "
              f"{sum(p < args.alpha for p in ps)}/{len(ps)} |", flush=True)

    null = []
    half = n_held // 2
    for k in range(args.null_splits):
        perm = rng.permutation(n_held)
        s, r = features(scores("held out", perm[:half]), scores("held out", perm[half:]))
        null.append(dataset_test(s, r, n_splits=args.splits, seed=args.seed + k)[0])
    fpr = sum(p < args.alpha for p in null) / len(null)
    summary["null"] = null
    inf = {n: sum(math.isinf(d[n]) for d in by_id.values()) for n in names}
    print(f"\nnot reproduced / infinite scores per scorer over all {len(by_id)} images: {inf}")
    print(f"\nnull: {n_held} held-out images halved at random {len(null)} times ({half} 'suspect' vs "
          f"{n_held - half} 'reference'): p < {args.alpha} in {sum(p < args.alpha for p in null)}/"
          f"{len(null)} (false-positive rate {fpr:.3f}); p-values median {np.median(null):.3g}, min {min(null):.3g}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
