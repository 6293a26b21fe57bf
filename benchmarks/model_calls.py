"""Model calls per image, optimisation vs success checks, before and after the checks' rounds.

"before" is `check_rounds=[]` (every check generates all its samples at a scale before deciding: the
algorithm as it ran until now); "after" is the default rounds (1, then up to 4, then 8). Decisions must be
identical; the script counts how many differ.

    python benchmarks/model_calls.py --section tiny --out bench-out/calls
    python benchmarks/model_calls.py --section toy --model digits --counts 64:8,0:8 --out bench-out/calls
    python benchmarks/model_calls.py --section toy --model t2i --counts 64:4,0:4 --out bench-out/calls
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from invmm import measure
from invmm.analysis.estimate import worst_case_calls
from invmm.config import default_config
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.inversion import Inverter, Target
from invmm.records import forward_equivalents
from invmm.similarity import build_similarity
from invmm.zoo import shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images
from invmm.zoo.tiny import build_tiny_ldm, build_tiny_pixel, build_tiny_sd, build_tiny_sd3

TINY = {"ddpm": build_tiny_pixel, "ldm": build_tiny_ldm, "sd": build_tiny_sd, "sd3": build_tiny_sd3}


def fmt_calls(c: dict) -> str:
    return f"{c['opt_forward']:,} + 2 x {c['opt_backward']:,} + {c['check_forward']:,} = {forward_equivalents(c):,}"


def tiny(args) -> dict:
    """Each preset on its tiny pipeline: one image not reproduced (threshold 2), a 100-step budget counted,
    and the preset's full budget from the same per-check formula (estimate.worst_case_calls)."""
    out = {}
    print("| preset | budget | checks | before: forwards opt + 2 x backwards + checks = forward-eq. | after | "
          "saved |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in TINY.items():
            adapter = load_adapter(str(build(Path(tmp) / name)))
            x = torch.zeros(1 if adapter.image_mode == "L" else 3, adapter.image_size, adapter.image_size)
            caption = "a red square" if adapter.conditional else None
            row = {}
            # The tiny pipelines have 100 training timesteps: a 200-step DDIM check is capped there.
            steps = min(default_config(adapter).sampler_steps, getattr(adapter, "num_train_timesteps", 10**9))
            for label, rounds in (("before", []), ("after", None)):
                cfg = default_config(adapter, similarity="pixel", threshold=2.0, max_steps=100, sampler_steps=steps,
                                     **({"check_rounds": rounds} if rounds is not None else {}))
                row[label] = invert_one(adapter, cfg, x, caption).calls
            saved = 1 - forward_equivalents(row["after"]) / forward_equivalents(row["before"])
            print(f"| {name} | 100 (counted) | {100 // cfg.check_every} | {fmt_calls(row['before'])} | "
                  f"{fmt_calls(row['after'])} | {saved:.0%} |")
            full = default_config(adapter, similarity="pixel", sampler_steps=steps)
            wc = worst_case_calls(adapter, full)
            before_full = worst_case_calls(adapter, full.replace(check_rounds=[]))["high"]
            saved_full = 1 - wc["low"]["forward_equivalents"] / before_full["forward_equivalents"]
            print(f"| {name} | {full.max_steps} (formula) | {full.max_steps // full.check_every} | "
                  f"{fmt_calls(before_full)} | {fmt_calls(wc['low'])} | {saved_full:.0%} |")
            out[name] = {"counted_100": row, "full_before": before_full, "full_after": wc["low"]}
    return out


def invert_one(adapter, cfg, pixels, caption):
    sim = build_similarity(cfg.similarity)
    return Inverter(adapter, cfg, sim, batch_images=1).run([Target(id="img", pixels=pixels, caption=caption)])[0].result


def sc(r) -> str:
    return "inf" if math.isinf(r.score) else f"{r.score:.3f}"


def toy(args) -> dict:
    t2i = args.model == "t2i"
    model = shipped_digits_t2i_model() if t2i else shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(args.counts))
    paths = export_images(manifest, args.out / f"inputs-{args.model}", ids=[e["id"] for e in chosen])
    items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"] if t2i else None) for e, p in zip(chosen, paths)]
    level = {e["id"]: e["copies"] for e in chosen}
    runs = {}
    for label, rounds in (("before", []), ("after", None)):
        adapter = load_adapter(str(model))
        cfg = default_config(adapter, similarity="pixel", **({"check_rounds": rounds} if rounds is not None else {}))
        t0 = time.perf_counter()
        res = measure(adapter, [ImageItem(id=it.id, path=it.path, caption=it.caption) for it in items], cfg,
                      batch_images=args.batch_images)
        runs[label] = (res, time.perf_counter() - t0)
        print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)
    (before, wb), (after, wa) = runs["before"], runs["after"]
    same = [(a.success, a.steps, a.score, a.guidance_scale) == (b.success, b.steps, b.score, b.guidance_scale)
            for a, b in zip(before, after)]
    print(f"\n{args.model} model, {len(items)} images ({args.counts}), preset {cfg.preset}, default budget, "
          f"--batch-images {args.batch_images}")
    print(f"identical decisions (success, steps, score, guidance scale): {sum(same)}/{len(same)}")
    print("\n| group | images | before: forward-eq. per image (median) | checks' share | after | checks' share | "
          "saved |\n|---|---|---|---|---|---|---|")
    out = {"identical": sum(same), "n": len(same), "wall_before_s": wb, "wall_after_s": wa}
    for name, pick in (("reproduced", lambda r: r.success), ("not reproduced", lambda r: not r.success)):
        idx = [i for i, r in enumerate(before) if pick(r)]
        if not idx:
            continue
        fb = [forward_equivalents(before[i].calls) for i in idx]
        fa = [forward_equivalents(after[i].calls) for i in idx]
        sb = statistics.median(before[i].calls["check_forward"] / fb[k] for k, i in enumerate(idx))
        sa = statistics.median(after[i].calls["check_forward"] / fa[k] for k, i in enumerate(idx))
        saved = 1 - sum(fa) / sum(fb)
        print(f"| {name} | {len(idx)} | {statistics.median(fb):,.0f} | {sb:.0%} | {statistics.median(fa):,.0f} | "
              f"{sa:.0%} | {saved:.0%} |")
        out[name] = {"before": fb, "after": fa, "saved": saved}
    print(f"\nwall: before {wb:.0f} s, after {wa:.0f} s, ratio {wb / wa:.2f}")
    print("per image (id, copies, before/after: score, steps, forward-eq.):")
    for a, b in zip(before, after):
        print(f"  {a.id} {level[a.id]}: {sc(a)} {a.steps} {forward_equivalents(a.calls):,} / {sc(b)} {b.steps} "
              f"{forward_equivalents(b.calls):,}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", choices=("tiny", "toy"), default="tiny")
    ap.add_argument("--model", choices=("digits", "t2i"), default="digits")
    ap.add_argument("--counts", default="64:8,0:8")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench-out/calls"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = tiny(args) if args.section == "tiny" else toy(args)
    name = "tiny" if args.section == "tiny" else f"toy-{args.model}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
