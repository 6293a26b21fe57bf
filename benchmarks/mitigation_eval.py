"""Did the mitigations work on the toy text-to-image model? `invmm mitigation-eval` on its duplicated (64-copy)
images with their training captions as triggers, its held-out captions as the others, every mitigation.

    python benchmarks/mitigation_eval.py --out bench-out/mitigations \\
        --ids digit-0600,digit-0850,digit-1742,digit-0360 --others 8 -- --max-steps 1000 --modes known

Prints the command, its wall time, the summary per mitigation and the per-image table (mitigation.csv).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

from invmm.mitigations import MITIGATIONS
from invmm.zoo import shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/mitigations"))
    ap.add_argument("--ids", default="digit-0600,digit-0850,digit-1742,digit-0360",
                    help="the trigger images (64-copy images of the toy)")
    ap.add_argument("--others", type=int, default=8, help="held-out captions for the side effects")
    ap.add_argument("--mitigations", default=",".join(MITIGATIONS))
    ap.add_argument("extra", nargs="*", help="more `invmm mitigation-eval` options, after --")
    args = ap.parse_args()
    model = shipped_digits_t2i_model()
    manifest = load_manifest(model)
    ids = args.ids.split(",")
    chosen = [e for e in manifest["images"] if e["id"] in ids]
    data = args.out / "data"
    paths = export_images(manifest, data / "images", ids=ids)
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "triggers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "caption", "copies"])
        for e, p in zip(chosen, paths):
            w.writerow([p.resolve(), e["id"], e["caption"], e["copies"]])
    held = [e for e in manifest["images"] if e["split"] == "heldout"]
    used = {e["caption"] for e in chosen}  # the others are captions that are not triggers
    captions = [c for c in dict.fromkeys(e["caption"] for e in held) if c not in used][: args.others]
    with open(data / "others.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "caption"])
        for k, c in enumerate(captions):
            w.writerow([f"other-{k}", c])
    command = ["invmm", "mitigation-eval", str(model), str(data / "triggers.csv"), "--others",
               str(data / "others.csv"), "--out", str(args.out / "eval"), "--similarity", "pixel"]
    for name in args.mitigations.split(","):
        command += ["--mitigation", name]
    command += args.extra
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(command, text=True, capture_output=True)
    print(done.stdout)
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"mitigation-eval exited {done.returncode}")
    print(f"wall {time.perf_counter() - t0:.0f} s\n")
    rows = list(csv.DictReader(open(args.out / "eval" / "mitigation.csv")))
    print("| image | mitigation | plain max | plain top-3 | plain share | InvMM (known caption) | score | steps | "
          "InvMM (inverted) | score |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['id']} | {r['mitigation']} | {r['plain_max_similarity']} | {r['plain_top3_mean']} | "
              f"{r['plain_share']} | {r['adversarial_reproduced']} | {r['adversarial_score']} | "
              f"{r['adversarial_steps']} | {r['inverted_reproduced']} | {r['inverted_score']} |")


if __name__ == "__main__":
    main()
