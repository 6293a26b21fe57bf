"""`invmm estimate` against the measured cost of the same audit, on the toy digits model.

Held-out digits are never reproduced, so an audit of them is the estimate's worst case exactly: every image
runs the whole budget and every check. Prints the estimate, the audit's wall time and counted model calls.

    python benchmarks/estimate_vs_audit.py --counts 0:16 --out bench-out/estimate
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from invmm.analysis.estimate import estimate, format_estimate
from invmm.config import default_config
from invmm.data.datasets import load_dataset
from invmm.data.images import load_image
from invmm.families import load_adapter
from invmm.records import forward_equivalents, summarise
from invmm.runs.audit import audit
from invmm.similarity import build_similarity
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="0:16")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench-out/estimate"))
    args = ap.parse_args()
    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    data = args.out / "data"
    export_images(manifest, data, ids=[e["id"] for e in chosen])
    items = load_dataset(data)
    adapter = load_adapter(str(model))
    cfg = default_config(adapter)
    pixels = load_image(items[0], mode=adapter.image_mode, size=adapter.image_size).pixels
    sim = build_similarity(cfg.similarity)
    t0 = time.perf_counter()
    est = estimate(adapter, cfg, len(items), sim, pixels, batch_images=args.batch_images)
    probe_s = time.perf_counter() - t0
    print(format_estimate(est))
    print(f"(the estimate took {probe_s:.1f} s)\n")

    run = args.out / "run"
    shutil.rmtree(run, ignore_errors=True)
    items = load_dataset(data)
    summary = audit(str(model), items, cfg, run, adapter=adapter, batch_images=args.batch_images)
    results = summarise(Ledger(run).read())
    fe = [forward_equivalents(r.calls) for r in results]
    low, high = est["calls_per_image"]["low"]["forward_equivalents"], est["calls_per_image"]["high"][
        "forward_equivalents"]
    print(f"audit: {len(results)} images, {sum(r.success for r in results)} reproduced, wall {summary.seconds:.0f} s "
          f"= {summary.seconds / 3600:.3f} h; estimate {est['hours_worst_case']:.3f} h "
          f"(ratio measured / estimated {summary.seconds / 3600 / est['hours_worst_case']:.2f})")
    print(f"forward-equivalents per image: counted median {statistics.median(fe):,.0f} (min {min(fe):,}, max "
          f"{max(fe):,}); estimated {low:,} (checks stop at the first sample) to {high:,} (every sample)")
    (args.out / "summary.json").write_text(json.dumps({"estimate": est, "audit_s": summary.seconds,
                                                       "counted_forward_equivalents": fe}, indent=1))


if __name__ == "__main__":
    main()
