"""Memorization over training through the commands: `invmm track` on a toy retrained with checkpoints, and the
TrainingMonitor at the same steps.

    # the digits toy, retrained with OUT/checkpoint-N/unet/ every 1,000 steps (about 7 minutes on one core)
    invmm zoo train-digits --out bench-out/track/digits-train --checkpoint-every 1000
    python benchmarks/track.py digits --train bench-out/track/digits-train --out bench-out/track
    # the toy LoRA, fine-tuned with checkpoint-N/pytorch_lora_weights.safetensors every 500 steps
    invmm zoo train-lora --out bench-out/track/lora-train --checkpoint-every 500
    python benchmarks/track.py lora --train bench-out/track/lora-train --out bench-out/track
    # the monitor at every digits checkpoint (the weights a training loop would hand it at those steps)
    python benchmarks/track.py monitor --train bench-out/track/digits-train --out bench-out/track

`digits` and `lora` run `invmm track` as a user would (its command and wall time are printed) and then print, per
checkpoint, the images reproduced by duplication level, and per level the onsets. `monitor` replays the checkpoints
through TrainingMonitor and prints each call's signal, InvMM outcome and whether it fired.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from invmm.zoo import shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images


def write_data(manifest: dict, counts: str, out: Path, caption: bool = False) -> tuple[Path, dict]:
    """The chosen images as PNGs and a manifest CSV with their duplication level as the label."""
    chosen = select_images(manifest, parse_level_counts(counts))
    paths = export_images(manifest, out / "images", ids=[e["id"] for e in chosen])
    path = out / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "label"] + (["caption"] if caption else []))
        for e, p in zip(chosen, paths):
            label = "held out" if e["split"] == "heldout" else f"{e['copies']} copies"
            w.writerow([p.resolve(), e["id"], label] + ([e["caption"]] if caption else []))
    return path, {e["id"]: e["copies"] for e in chosen}


def run_track(args: list[str]) -> float:
    command = ["invmm", "track", *args]
    print("$ " + " ".join(shlex.quote(a) for a in command), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(command, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    print(done.stdout)
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"invmm track exited {done.returncode}")
    print(f"wall {wall:.0f} s", flush=True)
    return wall


def by_level(track_dir: Path, levels: dict) -> None:
    summary = json.loads((track_dir / "track.json").read_text())
    names = sorted(set(levels.values()), reverse=True)
    print("reproduced per duplication level (copies in training; 0 = held out):")
    print("step   " + "  ".join(f"{n:>4}" for n in names))
    for r in summary["checkpoints"]:
        found = set(r["found"])
        cells = [f"{sum(1 for i in found if levels.get(i) == n)}/{sum(1 for v in levels.values() if v == n)}"
                 for n in names]
        print(f"{r['step']:<6} " + "  ".join(f"{c:>4}" for c in cells))
    print("onsets per level (image: onset step, - = never):")
    for n in names:
        ids = sorted(i for i, v in levels.items() if v == n)
        onsets = [summary["images"].get(i, {}).get("onset") for i in ids]
        shown = ", ".join("-" if o is None else str(o) for o in onsets)
        print(f"  {n:>3} copies: {shown}")


def digits(train: Path, out: Path, counts: str, extra: list[str]) -> None:
    manifest = load_manifest(train)
    data, levels = write_data(manifest, counts, out / "digits-data")
    track_dir = out / "digits"
    run_track([str(train), str(data), "--out", str(track_dir), "--final", str(train), "--final-step",
               str(manifest["step"]), "--similarity", "pixel", "--max-steps", "1000", "--early-stop", "--screen",
               "loss", "--keep", "1.0", "--negative", "held out", "--max-rate", "0.1", *extra])
    by_level(track_dir, levels)


def lora(train: Path, out: Path, counts: str, extra: list[str]) -> None:
    manifest = json.loads((train / "manifest.json").read_text())
    data, levels = write_data(manifest, counts, out / "lora-data", caption=True)
    track_dir = out / "lora"
    run_track([str(train), str(data), "--out", str(track_dir), "--base", str(shipped_digits_t2i_model()),
               "--final", str(train), "--final-step", str(manifest["train_config"]["steps"]), "--similarity",
               "pixel", "--early-stop", "--screen", "loss", "--keep", "1.0", "--negative", "held out",
               "--max-rate", "0.1", *extra])
    by_level(track_dir, levels)


def monitor(train: Path, out: Path, counts: str, every_invmm: int, top: int) -> None:
    from diffusers import UNet2DModel

    from invmm import TrainingMonitor
    from invmm.data.images import ImageItem

    manifest = load_manifest(train)
    data, levels = write_data(manifest, counts, out / "monitor-data")
    rows = list(csv.DictReader(open(data)))
    members = [ImageItem(r["id"], r["path"]) for r in rows if r["label"] != "held out"]
    others = [ImageItem(r["id"], r["path"]) for r in rows if r["label"] == "held out"]
    log = out / "monitor.jsonl"
    log.unlink(missing_ok=True)
    mon = TrainingMonitor(train, members, others, log_file=log, invmm_every=every_invmm, top=top, seed=0)
    steps = sorted(int(p.name.split("-")[1]) for p in train.glob("checkpoint-*")) + [manifest["step"]]
    print(f"monitor: {len(members)} members, {len(others)} non-members, signal loss, InvMM on the top {top} every "
          f"{every_invmm} call(s) at {mon.config.max_steps} steps")
    for step in steps:
        folder = train / f"checkpoint-{step}" / "unet" if step != manifest["step"] else train / "unet"
        unet = UNet2DModel.from_pretrained(folder, local_files_only=True).train()
        check = mon(step, unet)
        inv = check.invmm
        what = "-" if inv is None else f"{len(inv['reproduced'])}/{len(inv['images'])} reproduced " + \
            ", ".join(f"{i} ({levels[i]} copies)" for i in inv["reproduced"])
        print(f"step {step}: loss gap {check.signal['gap']:.3f}, AUC {check.signal['auc']:.3f}; InvMM {what}; "
              f"{'FIRED: ' + '; '.join(check.reasons) if check.crossed else 'quiet'} ({check.seconds:.0f} s)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("digits", "lora", "monitor"))
    ap.add_argument("--train", type=Path, required=True, help="the training output folder (with checkpoint-N/)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/track"))
    ap.add_argument("--counts", help="duplication level:images (default: digits 64:8,16:8,1:4,0:4; lora "
                                     "32:8,1:4,0:4; monitor 64:8,16:8,0:8)")
    ap.add_argument("--invmm-every", type=int, default=1, help="monitor: InvMM every N calls")
    ap.add_argument("--top", type=int, default=4, help="monitor: probes inverted")
    ap.add_argument("extra", nargs="*", help="more `invmm track` options, after --")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "digits":
        digits(args.train, args.out, args.counts or "64:8,16:8,1:4,0:4", args.extra)
    elif args.part == "lora":
        lora(args.train, args.out, args.counts or "32:8,1:4,0:4", args.extra)
    else:
        monitor(args.train, args.out, args.counts or "64:8,16:8,0:8", args.invmm_every, args.top)


if __name__ == "__main__":
    main()
