"""Partial (template) memorization on the shipped template toy (zoo/digits_template.py): whole-image InvMM
against masked InvMM with the planted masks (the loss weighted by the mask, or kept whole as the paper's), and
`--mask auto`; the memorization map against the planted masks (IoU).

Template members (a pattern seen with 64 different digits, each digit once) against held-out images (the same
layout, a pattern and a digit never seen). Prints markdown tables.

    python benchmarks/partial_memorization.py --out bench-out/partial
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from invmm.config import default_config
from invmm.data.datasets import load_dataset
from invmm.families import load_adapter
from invmm.functional import MAP_THRESHOLD
from invmm.records import summarise
from invmm.runs.audit import audit
from invmm.store.artifacts import artifact_stem, load_map
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_template_model
from invmm.zoo.digits import load_manifest
from invmm.zoo.digits_template import export_template_images, template_groups, template_mask


def auc(results, positive: set[str]) -> float:
    """Template members (positive) against held out, lower score = more memorized; inf ranks last, ties share."""
    ys = [r.id in positive for r in results]
    scores = [-(r.score if math.isfinite(r.score) else 1e12) for r in results]
    return float(roc_auc_score(ys, scores))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/partial"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--per-group", type=int, default=4, help="images per template and per held-out layout")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--batch-images", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = args.model or shipped_digits_template_model()
    manifest = load_manifest(model)
    chosen = template_groups(manifest, args.per_group)
    data = args.out / "data"
    if not (data / "manifest.csv").exists():
        export_template_images(manifest, data, ids=[e["id"] for e in chosen])
    masked_csv = data / "manifest.csv"
    whole_csv = data / "whole.csv"
    lines = masked_csv.read_text().splitlines()
    whole_csv.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    members = {e["id"] for e in chosen if e["template"] is not None}
    planted = {e["id"]: template_mask(e) > 0 for e in chosen}

    adapter = load_adapter(str(model))
    base = default_config(adapter, similarity="pixel", max_steps=args.max_steps, sampler_steps=args.sampler_steps)
    runs = {
        "whole image": (whole_csv, base, None),
        "planted mask, weighted loss": (masked_csv, base.replace(mask_loss="weighted"), None),
        "planted mask, whole loss": (masked_csv, base.replace(mask_loss="whole"), None),
        "--mask auto": (whole_csv, base, "auto"),
    }
    results, seconds = {}, {}
    for name, (csv, cfg, mask) in runs.items():
        out = args.out / name.replace(" ", "-").replace(",", "").replace("--", "")
        if mask == "auto" and not (out / "whole").exists() and (args.out / "whole-image" / "run.json").exists():
            # the auto mode's first pass is the whole-image run (same settings, same seeds): resumed, not redone
            shutil.copytree(args.out / "whole-image", out / "whole")
        audit(str(model), load_dataset(csv), cfg, out, adapter=adapter, batch_images=args.batch_images, mask=mask,
              data_source=str(csv))
        # wall seconds over the run's sessions (a rerun resumes and adds ~0); auto's first pass is the whole run
        seconds[name] = sum(s["seconds"] for s in json.loads((out / "run.json").read_text())["sessions"])
        results[name] = summarise(Ledger(out).read())

    print(f"model: {model}; {len(members)} template members, {len(chosen) - len(members)} held out; "
          f"{args.max_steps} steps, pixel similarity (beta {base.beta}), {args.sampler_steps}-step checks\n")
    print("| run | members reproduced | member median score | held out reproduced | AUC member vs held out | "
          "seconds |")
    print("|---|---|---|---|---|---|")
    for name, res in results.items():
        mem = [r for r in res if r.id in members]
        held = [r for r in res if r.id not in members]
        fin = [r.score for r in mem if math.isfinite(r.score)]
        med = float(np.median([r.score for r in mem]))
        print(f"| {name} | {len(fin)}/{len(mem)} | {med:.3f} | "
              f"{sum(math.isfinite(r.score) for r in held)}/{len(held)} | {auc(res, members):.3f} | "
              f"{seconds[name]:.0f} |")

    print("\nMemorization map of the whole-image pass (map >= "
          f"{MAP_THRESHOLD}) against the planted mask; and what --mask auto measured:\n")
    print("| group | mean IoU with the planted mask | images with a marked region | mean marked fraction |")
    print("|---|---|---|---|")
    whole_dir = args.out / "whole-image"
    for group, ids in (("template members", sorted(members)),
                       ("held out", sorted(set(planted) - members))):
        ious, marked, frac = [], 0, []
        for i in ids:
            m = load_map(Path(f"{artifact_stem(whole_dir, i)}.safetensors"))
            region = (m >= MAP_THRESHOLD).numpy()
            ious.append(iou(region, planted[i]))
            marked += bool(region.any())
            frac.append(region.mean())
        print(f"| {group} | {np.mean(ious):.3f} | {marked}/{len(ids)} | {np.mean(frac):.3f} |")
    # How the thresholded map's IoU moves with the threshold (the maps stored by the whole-image pass; --mask auto
    # uses MAP_THRESHOLD), and the whole pass's reproduced fraction (map >= MAP_THRESHOLD) as a detector by itself.
    print("\n| threshold | members: mean IoU | held out: mean IoU | members: mean marked fraction | held out: mean "
          "marked fraction |")
    print("|---|---|---|---|---|")
    maps = {i: load_map(Path(f"{artifact_stem(whole_dir, i)}.safetensors")) for i in planted}
    for thr in (0.25, 0.5, 0.75, 1.0):
        row = []
        for ids in (sorted(members), sorted(set(planted) - members)):
            row.append(np.mean([iou((maps[i] >= thr).numpy(), planted[i]) for i in ids]))
        fr = [np.mean([(maps[i] >= thr).float().mean().item() for i in ids])
              for ids in (sorted(members), sorted(set(planted) - members))]
        print(f"| {thr} | {row[0]:.3f} | {row[1]:.3f} | {fr[0]:.3f} | {fr[1]:.3f} |")
    whole = results["whole image"]
    frac_auc = roc_auc_score([r.id in members for r in whole], [r.reproduced_fraction for r in whole])
    print(f"\nThe whole-image pass's reproduced fraction (share of pixels with map >= {MAP_THRESHOLD}) as a score, "
          f"members vs held out: AUC {frac_auc:.3f}")
    auto = results["--mask auto"]
    kinds = {"masked": sum(bool(r.mask and r.mask.get("path")) for r in auto),
             "kept whole": sum(bool(r.mask and r.mask.get("note")) for r in auto)}
    print(f"\n--mask auto: {kinds['masked']} images measured on their map's region, {kinds['kept whole']} kept the "
          "whole-image result (reproduced whole, or no region marked)")
    summary = {name: [{"id": r.id, "score": None if math.isinf(r.score) else r.score, "member": r.id in members,
                       "mask": r.mask, "reproduced_fraction": r.reproduced_fraction} for r in res]
               for name, res in results.items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
