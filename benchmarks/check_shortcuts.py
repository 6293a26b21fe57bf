"""The opt-in check shortcuts against the exact check, on a shipped toy model: decisions, AUC and model calls.

Three runs of the same images with the family's preset (pixel similarity):
- exact: the default check (rounds; every decision is the full check's);
- preview: `check_preview_steps=K` (each check first samples one image per scale with K sampler steps and
  drops the scales whose preview is not a copy);
- rec skip: `check_skip_rec=G`, a gate on the window mean of L_rec. G is calibrated on the exact run: the
  factor times the highest L_rec at which one of the most duplicated images was reproduced there. The
  other images (less duplicated, held out) are not used to set it.

Both shortcuts keep the fit of the exact run (their skipped draws are still taken), so a decision can only
move later (a success seen at a later check, with a higher KL) or be lost. The script counts those changes,
the duplicated images that lose their success, the AUC of duplicated vs held out, and the denoiser
forward-equivalents saved (a backward = two forwards). Usage:

    python benchmarks/check_shortcuts.py --model digits --counts 64:8,16:8,0:8 --out bench-out/shortcuts
    python benchmarks/check_shortcuts.py --model t2i --counts 64:8,0:4 --out bench-out/shortcuts
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from invmm import measure
from invmm.analysis.metrics import roc_metrics
from invmm.config import default_config
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.records import forward_equivalents
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def auc(levels: list[int], scores: list[float]) -> float:
    """Duplicated (any copies) vs held out; lower = more memorized, inf below every finite score."""
    return roc_metrics([int(lv > 0) for lv in levels], scores, higher_is_better=False)["auc"]


def rec_at_success(r) -> float | None:
    return r.checks[-1][4] if r.success and r.checks and len(r.checks[-1]) > 4 else None


def compare(exact, other, level) -> dict:
    same = lost = later = 0
    for a, b in zip(exact, other):
        if (a.success, a.steps, a.score, a.guidance_scale) == (b.success, b.steps, b.score, b.guidance_scale):
            same += 1
        elif a.success and not b.success:
            lost += 1
        else:
            later += 1
    dup_lost = sum(1 for a, b in zip(exact, other) if level[a.id] > 0 and a.success and not b.success)
    return {"identical": same, "lost": lost, "changed": later, "duplicated_lost": dup_lost}


def fe(rs) -> int:
    return sum(forward_equivalents(r.calls) for r in rs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("digits", "t2i"), default="digits")
    ap.add_argument("--counts", default="64:8,16:8,0:8", help="level:n,...; level 0 = held out")
    ap.add_argument("--preview-steps", type=int, default=10)
    ap.add_argument("--rec-factor", type=float, default=2.0, help="gate = this x the highest L_rec at success of "
                                                                  "the most duplicated images")
    ap.add_argument("--options", default="preview,rec", help="the shortcuts to run against the exact check")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench-out/shortcuts"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t2i = args.model == "t2i"
    model = shipped_digits_t2i_model() if t2i else shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    level = {e["id"]: e["copies"] for e in chosen}
    paths = export_images(manifest, args.out / f"inputs-{args.model}", ids=list(level))
    items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"] if t2i else None) for e, p in zip(chosen, paths)]
    adapter = load_adapter(str(model))

    def run(label, **options):
        cfg = default_config(adapter, similarity="pixel", **options)
        t0 = time.perf_counter()
        res = measure(adapter, [ImageItem(id=i.id, path=i.path, caption=i.caption) for i in items], cfg,
                      batch_images=args.batch_images)
        wall = time.perf_counter() - t0
        print(f"{label}: {wall:.0f} s", flush=True)
        return res, wall, cfg

    exact, wall_exact, cfg = run("exact")
    with open(args.out / f"{args.model}-exact.jsonl", "w") as f:  # every check's L_rec, for the gate's choice
        for r in exact:
            f.write(json.dumps(r.to_json()) + "\n")
    top = max(level.values())
    calib = [rec_at_success(r) for r in exact if level[r.id] == top and r.success]
    gate = args.rec_factor * max(calib)
    print(f"L_rec at success of the {top}-copy images (exact run): {sorted(round(v, 5) for v in calib)}; "
          f"gate = {args.rec_factor} x {max(calib):.5f} = {gate:.5f}")
    for name, group in (("reproduced, at their checks", [r for r in exact if r.success]),
                        ("not reproduced, at their checks", [r for r in exact if not r.success])):
        recs = [c[4] for r in group for c in r.checks]
        if recs:
            print(f"L_rec {name}: min {min(recs):.4f}, median {np.median(recs):.4f}, max {max(recs):.4f} "
                  f"({len(recs)} checks)")
    runs = {"exact": (exact, wall_exact)}
    shortcuts = (("preview", f"preview {args.preview_steps}", {"check_preview_steps": args.preview_steps}),
                 ("rec", f"rec skip {gate:.4g}", {"check_skip_rec": gate}))
    for key, label, options in shortcuts:
        if key not in args.options.split(","):
            continue
        res, wall, _ = run(label, **options)
        runs[label] = (res, wall)

    levels = [level[r.id] for r in exact]
    print(f"\n{args.model} model, {len(items)} images ({args.counts}), preset {cfg.preset}, default budget, "
          f"--batch-images {args.batch_images}")
    print("\n| check | identical decisions | successes lost (duplicated) | later success | reproduced | AUC "
          "dup. vs held out | forward-eq. reproduced | not reproduced | saved | CPU wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    out = {"gate": gate, "calibration": calib, "runs": {}}
    base_fe = fe(exact)
    for label, (res, wall) in runs.items():
        c = compare(exact, res, level)
        a = auc(levels, [r.score for r in res])
        rep = [r for r, e in zip(res, exact) if e.success]
        notrep = [r for r, e in zip(res, exact) if not e.success]
        saved = 1 - fe(res) / base_fe
        print(f"| {label} | {c['identical']}/{len(res)} | {c['lost']} ({c['duplicated_lost']}) | {c['changed']} | "
              f"{sum(r.success for r in res)} | {a:.3f} | {fe(rep) / max(len(rep), 1):,.0f} | "
              f"{fe(notrep) / max(len(notrep), 1):,.0f} | {saved:.0%} | {wall:.0f} |")
        out["runs"][label] = {**c, "auc": a, "wall_s": wall, "forward_equivalents": fe(res), "saved": saved,
                              "skips": [r.check_skips for r in res]}
    print(f"\nper image (id, copies; {' / '.join(runs)}: score, steps):")
    for i, r in enumerate(exact):
        cells = []
        for res, _ in runs.values():
            x = res[i]
            cells.append(f"{x.score:.3f} {x.steps}" if math.isfinite(x.score) else f"inf {x.steps}")
        print(f"  {r.id} {level[r.id]}: " + " / ".join(cells))
    (args.out / f"{args.model}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
