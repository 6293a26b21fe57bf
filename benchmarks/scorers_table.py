"""Every scorer, old and new, on the shipped toy models: AUC and TPR@1%FPR, members vs non-members and
64-copy vs held out, with seconds per image, in one table per model.

digits (unconditional DDPM): 8 images of 64 copies, 200 single-copy members, 200 held out. With --reuse-claims
the scores run of `benchmarks/claims.py --section scores` is copied first, so its InvMM scores (40 images, 1,000
steps) and its baseline scores are reused and only the new scorers are computed.
t2i (pixel-space text-to-image, captions "a handwritten seven"): 8 images of 64 copies, 64 single-copy members,
64 held out, each with its caption; the prompt-level detectors score the captions, which this toy shares per digit.
lora (the t2i model with the shipped toy LoRA): its 8 planted images repeated 32 times and 8 seen once, each with
a caption of its own ("client image 03"), and 16 held out with captions never trained on: a caption-level test.

    python benchmarks/scorers_table.py --reuse-claims bench-out/claims/scores --out bench-out/scorers_table
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from invmm.analysis.evaluate import evaluate_run
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.lora import LoraSpec
from invmm.runs.scores import score_with_specs
from invmm.zoo import shipped_digits_lora, shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, select_images

LABELS = {64: "dup64", 32: "rep32", 1: "single", 0: "heldout"}
DIGITS_SCORERS = "loss;secmi;pia;sima;generate_compare"
T2I_SCORERS = "loss;secmi;pia;sima;clid;noise_norm;anisotropy;sharpness"


def labelled_items(model: Path, counts: dict[int, int], root: Path) -> list[ImageItem]:
    manifest = load_manifest(model)
    chosen = select_images(manifest, counts)
    paths = export_images(manifest, root, ids=[e["id"] for e in chosen])
    return [ImageItem(id=f"{LABELS[e['copies']]}/{e['id']}.png", path=str(p), label=LABELS[e["copies"]],
                      caption=e.get("caption")) for e, p in zip(chosen, paths)]


def table(run: Path, title: str, top: str = "dup64") -> None:
    rows = {}
    for pos in (top, "single"):
        summary, _ = evaluate_run(run, positive=[pos], negative=["heldout"], n_boot=200)
        rows[pos] = {r["scorer"]: r for r in summary}
    print(f"\n{title}\n")
    copies = top.removeprefix("dup").removeprefix("rep")
    print(f"| scorer | direction | {copies} copies vs held out: n+/n-, AUC, TPR@1%FPR | members (1 copy) vs held out: "
          "n+/n-, AUC, TPR@1%FPR | s/image |\n|---|---|---|---|---|")

    def cell(r):
        if r is None or r.get("auc") is None:
            return "-"
        return f"{r['n_positive']}/{r['n_negative']}, {r['auc']:.3f}, {r['tpr@1%fpr']:.3f}"

    for name in rows[top]:
        a, b = rows[top][name], rows["single"].get(name)
        sec = a["seconds_per_image"]
        print(f"| {name} | {a['direction']} | {cell(a)} | {cell(b)} | "
              f"{'-' if sec is None else f'{sec:.4g}'} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out/scorers_table"))
    ap.add_argument("--reuse-claims", type=Path, default=None, help="the claims.py scores run folder to start from")
    ap.add_argument("--models", default="digits,t2i,lora")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    # name: (folder with the manifest, counts per duplication level, scorers, LoRA or None, title, top level)
    parts = {
        "digits": (shipped_digits_model(), {64: 8, 1: 200, 0: 200}, DIGITS_SCORERS, None,
                   "shipped toy digits model (unconditional DDPM)", "dup64"),
        "t2i": (shipped_digits_t2i_model(), {64: 8, 1: 64, 0: 64}, T2I_SCORERS, None,
                "shipped toy text-to-image model (known captions)", "dup64"),
        "lora": (shipped_digits_lora(), {32: 8, 1: 8, 0: 16}, T2I_SCORERS, shipped_digits_lora(),
                 "shipped toy LoRA on the text-to-image model (a caption per planted image)", "rep32"),
    }
    for name in args.models.split(","):
        source, counts, scorers, lora, title, top = parts[name]
        run = args.out / name
        if name == "digits" and args.reuse_claims and not run.exists():
            shutil.copytree(args.reuse_claims, run)
        items = labelled_items(source, counts, args.out / f"{name}-data")
        model = shipped_digits_t2i_model() if lora else source
        adapter = load_adapter(str(model), loras=[LoraSpec(str(lora), 1.0)] if lora else None)
        t0 = time.perf_counter()
        score_with_specs(adapter, items, scorers, run, seed=args.seed)
        print(f"{name}: scored {len(items)} images in {time.perf_counter() - t0:.1f} s")
        table(run, title, top=top)

if __name__ == "__main__":
    main()
