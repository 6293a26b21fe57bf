"""Reproduce the paper's claims at toy scale with `invmm evaluate`'s machinery (issue 4, section 4).

Sections (each resumable: scores live in run folders under --out and are reused):

  scores    the final toy model: InvMM vs duplication (1/4/16/64 copies), memorization vs membership
            (Loss, SecMI, PIA, InvMM on single-copy members vs held-out, and on 64-copy vs single-copy),
            and every scorer on one table (AUC, TPR@1%FPR, seconds per image).
  training  InvMM of the 64-copy images (and Loss/PIA/SecMI members vs non-members) at checkpoints.
  sampling  the same 64-copy images with the check sampler changed: DDIM 50 vs 200, eta 0 vs 1.
  guidance  the toy text-to-image model's 64-copy pairs (known caption) checked at one guidance scale each.

    python benchmarks/claims.py --section scores --out bench-out/claims
    python benchmarks/claims.py --section training --checkpoints DIR/checkpoints --final DIR --out bench-out/claims
    python benchmarks/claims.py --section sampling --out bench-out/claims
    python benchmarks/claims.py --section guidance --out bench-out/claims   # toy text-to-image model

The checkpoints come from `invmm zoo train-digits --out DIR --seed 0 --steps 8000 --checkpoint-every 2000`
(the shipped model is that run's final step). InvMM runs with --max-steps (default 1,000) and DDIM-50
checks unless the section varies them; the MIA scorers run on every single-copy and held-out image.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from invmm.analysis.evaluate import evaluate_run
from invmm.config import preset
from invmm.data.datasets import load_dataset
from invmm.families import load_adapter
from invmm.runs.scores import read_scores, score_dataset
from invmm.scorers import build_scorer
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest

LABELS = {64: "dup64", 16: "dup16", 4: "dup4", 1: "single", 0: "heldout"}
MIAS = ("loss", "secmi", "pia")


def export_labelled(manifest: dict, root: Path, per_level: dict[int, int | None]) -> dict[str, list[str]]:
    """A folder per label with the first n images of each duplication level (None: all of them)."""
    chosen = {}
    for level, n in per_level.items():
        ids = [e["id"] for e in manifest["images"] if e["copies"] == level][:n]
        export_images(manifest, root / LABELS[level], ids=ids)
        chosen[LABELS[level]] = [f"{LABELS[level]}/{i}.png" for i in ids]
    return chosen


def invmm_spec(args, **over) -> str:
    opts = {"max_steps": args.max_steps, "sampler_steps": 50, **over}
    return "invmm:" + ",".join(f"{k}={v}" for k, v in opts.items())


def score(adapter, items, specs, run, args, base_cfg=None):
    scorers = [build_scorer(s, adapter, invmm_config=base_cfg, batch_images=args.batch_images) for s in specs]
    t0 = time.perf_counter()
    score_dataset(adapter, items, scorers, run, seed=args.seed,
                  on_batch=lambda n, d, t: print(f"    {run.name} {n}: {d}/{t}", flush=True))
    return time.perf_counter() - t0


def fmt(x) -> str:
    return "inf" if isinstance(x, float) and math.isinf(x) else ("-" if x is None else f"{x:.3f}")


def invmm_by_label(run: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in read_scores(run):
        if r.scorer == "invmm" and r.status == "ok":
            out.setdefault(r.label, []).append(r)
    return out


def level_table(by_label: dict[str, list]) -> list[str]:
    lines = ["| label | n | reproduced | median InvMM | median steps |", "|---|---|---|---|---|"]
    for label in LABELS.values():
        rs = by_label.get(label)
        if not rs:
            continue
        s = [r.score for r in rs]
        lines.append(f"| {label} | {len(rs)} | {sum(map(math.isfinite, s))} | {fmt(statistics.median(s))} | "
                     f"{statistics.median(r.details.get('steps', 0) for r in rs):.0f} |")
    return lines


def section_scores(args):
    model = args.final or shipped_digits_model()
    manifest = load_manifest(model)
    root = args.out / "data"
    export_labelled(manifest, root / "all", {64: 8, 16: 8, 4: 8, 1: None, 0: None})
    export_labelled(manifest, root / "invmm", {64: 8, 16: 8, 4: 8, 1: 8, 0: 8})
    adapter = load_adapter(str(model))
    run = args.out / "scores"
    wall = {}
    wall["mia+generate"] = score(adapter, load_dataset(root / "all", labelled=True),
                                 [*MIAS, "generate_compare"], run, args)
    # InvMM is costly: it runs on a subset; ids match the full set's, so both land in one run folder.
    items = load_dataset(root / "invmm", labelled=True)
    wall["invmm"] = score(adapter, items, [invmm_spec(args)], run, args, preset("ddpm", similarity="pixel"))

    lines = [f"model: {model}", f"wall (this invocation): {json.dumps({k: round(v) for k, v in wall.items()})}", ""]
    by_label = invmm_by_label(run)
    lines += ["### Duplication", *level_table(by_label)]
    pairs = [(lv, r.score) for lv, lab in LABELS.items() if lv > 0 for r in by_label.get(lab, [])]
    rho = spearmanr([p[0] for p in pairs], [1e9 if math.isinf(p[1]) else p[1] for p in pairs]).statistic
    lines += ["", f"Spearman rho(copies, InvMM) over training images (inf ranked last): {rho:.3f}", ""]
    for pos, neg in (("dup64", "heldout"), ("single", "heldout"), ("dup64", "single")):
        rows, out = evaluate_run(run, positive=[pos], negative=[neg], n_boot=1000, seed=0)
        lines += [f"### {pos} vs {neg} ({out})",
                  "| scorer | n+/n- | AUC [95% CI] | TPR@1%FPR | TPR@0.1%FPR | s/image |", "|---|---|---|---|---|---|"]
        for r in rows:
            ci = f"{fmt(r['auc'])} [{fmt(r.get('auc_lo'))}, {fmt(r.get('auc_hi'))}]"
            lines.append(f"| {r['scorer']} | {r['n_positive']}/{r['n_negative']} | {ci} | {fmt(r['tpr@1%fpr'])} | "
                         f"{fmt(r['tpr@0.1%fpr'])} | {r['seconds_per_image']:.3g} |")
        lines.append("")
    return lines


def section_training(args):
    ckpts = sorted(p for p in Path(args.checkpoints).iterdir() if (p / "model_index.json").exists())
    models = [*ckpts, args.final] if args.final else ckpts
    manifest = load_manifest(models[-1])
    root = args.out / "data"
    export_labelled(manifest, root / "dup64", {64: 8})
    export_labelled(manifest, root / "members", {1: None, 0: None})
    lines = ["| checkpoint | dup64 reproduced | median InvMM | median steps | Loss AUC | PIA AUC | SecMI AUC "
             "| wall s |", "|---|---|---|---|---|---|---|---|"]
    for m in models:
        name = json.loads((Path(m) / "manifest.json").read_text()).get("step") or "final"
        adapter = load_adapter(str(m))
        run = args.out / f"training-{name}"
        t0 = time.perf_counter()
        score(adapter, load_dataset(root / "dup64", labelled=True), [invmm_spec(args)], run, args,
              preset("ddpm", similarity="pixel"))
        score(adapter, load_dataset(root / "members", labelled=True), list(MIAS), run, args)
        wall = time.perf_counter() - t0
        rs = invmm_by_label(run)["dup64"]
        s = [r.score for r in rs]
        rows, _ = evaluate_run(run, positive=["single"], negative=["heldout"], n_boot=200, seed=0)
        auc = {r["scorer"]: r["auc"] for r in rows}
        lines.append(f"| {name} | {sum(map(math.isfinite, s))}/{len(s)} | {fmt(statistics.median(s))} | "
                     f"{statistics.median(r.details['steps'] for r in rs):.0f} | {fmt(auc.get('loss'))} | "
                     f"{fmt(auc.get('pia'))} | {fmt(auc.get('secmi'))} | {wall:.0f} |")
        print(lines[-1], flush=True)
    return lines


def variant_row(name: str, run: Path, wall: float) -> str:
    """One table row for the 64-copy images scored under one setting: reproduced, median, each score."""
    rs = sorted(invmm_by_label(run)["dup64"], key=lambda r: r.id)
    s = [r.score for r in rs]
    return (f"| {name} | {sum(map(math.isfinite, s))}/{len(s)} | {fmt(statistics.median(s))} | "
            f"{statistics.median(r.details['steps'] for r in rs):.0f} | {', '.join(fmt(x) for x in s)} | "
            f"{wall:.0f} |")


def section_sampling(args):
    model = args.final or shipped_digits_model()
    manifest = load_manifest(model)
    root = args.out / "data"
    export_labelled(manifest, root / "dup64", {64: 8})
    adapter = load_adapter(str(model))
    items = load_dataset(root / "dup64", labelled=True)
    lines = ["| check sampler | reproduced | median InvMM | median steps | scores | wall s |",
             "|---|---|---|---|---|---|"]
    for steps, eta in ((50, 0.0), (200, 0.0), (50, 1.0), (200, 1.0)):
        run = args.out / f"sampling-ddim{steps}-eta{eta:g}"
        wall = score(adapter, items, [invmm_spec(args, sampler_steps=steps, eta=eta)], run, args,
                     preset("ddpm", similarity="pixel"))
        lines.append(variant_row(f"DDIM {steps}, eta {eta:g}", run, wall))
        print(lines[-1], flush=True)
    return lines


def section_guidance(args):
    """Toy text-to-image model, known caption: the eight 64-copy pairs with one fixed guidance scale each."""
    from invmm.data.images import ImageItem
    from invmm.zoo import shipped_digits_t2i_model

    model = shipped_digits_t2i_model()
    manifest = load_manifest(model)
    chosen = [e for e in manifest["images"] if e["copies"] == 64][:8]
    paths = export_images(manifest, args.out / "data" / "t2i", ids=[e["id"] for e in chosen])
    adapter = load_adapter(str(model))
    lines = ["| guidance | reproduced | median InvMM | median steps | scores | wall s |", "|---|---|---|---|---|---|"]
    for scale in args.guidance:
        items = [ImageItem(id=e["id"], path=str(p), caption=e["caption"], label="dup64")
                 for e, p in zip(chosen, paths)]
        run = args.out / f"guidance-{scale:g}"
        wall = score(adapter, items, [invmm_spec(args)], run, args,
                     preset("sd", similarity="pixel", guidance_scales=[scale]))
        lines.append(variant_row(f"{scale:g}", run, wall))
        print(lines[-1], flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", choices=("scores", "training", "sampling", "guidance"), required=True)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.0])
    ap.add_argument("--out", type=Path, default=Path("bench-out/claims"))
    ap.add_argument("--final", type=Path, default=None, help="final model (default: the shipped toy model)")
    ap.add_argument("--checkpoints", type=Path, default=None)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.perf_counter()
    sections = {"scores": section_scores, "training": section_training, "sampling": section_sampling,
                "guidance": section_guidance}
    lines = sections[args.section](args)
    lines.append(f"\nsection {args.section}: {time.perf_counter() - t0:.0f} s wall, torch threads "
                 f"{torch.get_num_threads()}")
    text = "\n".join(lines)
    print("\n" + text)
    (args.out / f"{args.section}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
