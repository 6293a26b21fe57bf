"""Does the model-level interval cover? A census of one whole population, then the sampled design drawn from it many
times with no new model calls.

The shipped toy digits model's 224 training images (8 seen 64 times, 8 x 16, 8 x 4, 200 once) are audited whole
(`invmm audit --screen loss --keep 1.0`: every image inverted, every image screened), which gives the true count D
of images reproduced within the budget. Then, for several census sizes K (the screen's top K, or none) and sample
sizes M, the design is drawn `--draws` times (a simple random sample of M of the other 224 - K, each draw its own
seed) and assessed from the census's own results (analysis/population.py): the two-sided 95% interval's coverage of
D, the one-sided 95% upper bound's, the estimate's bias, and the screen's recall. Prints markdown tables.

    python benchmarks/assess_coverage.py --out bench-out/assess   # the census: ~40 min on 2 CPU cores
    python benchmarks/assess_coverage.py --out bench-out/assess --analyse   # the tables again from the census
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from invmm.analysis.assess import reproduced
from invmm.analysis.population import Counts, estimate, recall_interval
from invmm.config import default_config
from invmm.data.datasets import load_dataset
from invmm.data.sampling import draw
from invmm.families import load_adapter
from invmm.records import summarise
from invmm.runs.audit import audit
from invmm.runs.scores import read_scores
from invmm.runs.screen import suspicion_order
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest


def census(out: Path, max_steps: int, sampler_steps: int, batch_images: int) -> float:
    model = shipped_digits_model()
    manifest = load_manifest(model)
    train = [e["id"] for e in manifest["images"] if e["split"] == "train"]
    export_images(manifest, out / "images", ids=train)
    adapter = load_adapter(str(model))
    config = default_config(adapter, similarity="pixel", max_steps=max_steps, sampler_steps=sampler_steps,
                            map_samples=0)
    t0 = time.perf_counter()
    audit(str(model), load_dataset(out / "images"), config, out / "run", adapter=adapter, screen="loss", keep=1.0,
          batch_images=batch_images)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/assess"))
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--analyse", action="store_true", help="only the tables, from OUT/run")
    args = ap.parse_args()
    if not args.analyse:
        seconds = census(args.out, args.max_steps, args.sampler_steps, args.batch_images)
        print(f"census: {seconds:.0f} s\n")
    summaries = summarise(Ledger(args.out / "run").read())
    outcome = {s.id: s.status == "ok" and reproduced(s, None) for s in summaries}
    ids = sorted(outcome)
    n, d = len(ids), sum(outcome.values())
    screen = [r for r in read_scores(args.out / "run" / "screen") if r.scorer == "loss"]
    ranked = [r.id for r in suspicion_order(screen, higher_is_better=False)]
    print(f"population: {n} training images of the shipped toy digits model, {args.max_steps} steps, DDIM "
          f"{args.sampler_steps} checks, pixel similarity; reproduced (the truth D): {d} "
          f"({', '.join(i for i in ids if outcome[i])}); screen: loss; {args.draws} draws per design\n")
    print("| census (K) | sample (M) | reproduced in the census | mean estimate (bias) | two-sided 95% coverage "
          "| mean width | one-sided 95% upper coverage | mean upper | recall (true) | recall interval coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in (0, 10, 25):
        top = ranked[:k]
        rest = [i for i in ids if i not in set(top)]
        x = sum(outcome[i] for i in top)
        true_recall = x / d if d and k else None
        for m in (20, 50, 100):
            ests, covered, up_cov, widths, uppers, rec_cov = [], 0, 0, [], [], 0
            for seed in range(args.draws):
                sample = draw(rest, m, seed)
                c = Counts(n, k, x, m, sum(outcome[i] for i in sample))
                e = estimate(c)
                ests.append(e.count)
                covered += e.two_sided[0] <= d <= e.two_sided[1]
                up_cov += d <= e.upper
                widths.append(e.two_sided[1] - e.two_sided[0])
                uppers.append(e.upper)
                r = recall_interval(c) if k else None
                if r and true_recall is not None and r["lower"] is not None:
                    rec_cov += r["lower"] <= true_recall <= (r["upper"] if r["upper"] is not None else 1.0)
            mean = statistics.mean(ests)
            recall = "-" if true_recall is None else f"{true_recall:.2f}"
            rc = "-" if true_recall is None else f"{rec_cov / args.draws:.3f}"
            print(f"| {k or 'none'} | {m} | {x} | {mean:.2f} ({mean - d:+.2f}) | {covered / args.draws:.3f} | "
                  f"{statistics.mean(widths):.1f} | {up_cov / args.draws:.3f} | {statistics.mean(uppers):.1f} | "
                  f"{recall} | {rc} |")
    print(f"\nexact coverage of the two-sided interval for the K = 0, M = 50 design at this D (summed over every "
          f"sample count, not drawn): {exact_coverage(n, d, 50):.4f}")
    print(f"\nThe same exact coverage for every true count D from 0 to {n} (no census, a sample of M; not drawn):\n")
    print("| M | two-sided: min over D | median | max | one-sided upper: min over D | median |")
    print("|---|---|---|---|---|---|")
    for m in (20, 50, 100):
        two = [exact_coverage(n, dd, m) for dd in range(n + 1)]
        one = [exact_coverage(n, dd, m, upper_only=True) for dd in range(n + 1)]
        print(f"| {m} | {min(two):.4f} | {statistics.median(two):.4f} | {max(two):.4f} | {min(one):.4f} | "
              f"{statistics.median(one):.4f} |")


def exact_coverage(n: int, d: int, m: int, *, upper_only: bool = False) -> float:
    """P(the interval holds d) for a sample of m of n with d reproduced, summed over the hypergeometric: the
    two-sided interval, or the one-sided upper bound."""
    from scipy.stats import hypergeom

    dist = hypergeom(n, d, m)
    total = 0.0
    for y in range(max(0, m - (n - d)), min(m, d) + 1):
        e = estimate(Counts(n, 0, 0, m, y))
        if (d <= e.upper) if upper_only else (e.two_sided[0] <= d <= e.two_sided[1]):
            total += dist.pmf(y)
    return float(total) if not math.isnan(total) else float("nan")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
