"""Early stopping (`--early-stop`): calibration, held-out false stops, and what it saves.

Two kinds of run on a shipped toy, each a `measure` over chosen images (duplication levels as `--counts`):

- **observe**: `--early-stop` with a patience beyond the budget, so nothing stops: every image runs as without the
  option (the centre sample the rule adds draws from no stream the inversion uses) and its record keeps the
  evidence (`early_stop.first_sign`: the first check with a sign of a copy). This is the full run.
- **stop**: `--early-stop` at a patience P: the run a user makes.

`--analyse` reads every run under OUT and prints, per run, the reproduced images with their first sign and
success step (the rule's lead), the false stops a patience would make (a reproduced image with no sign by the
first check at or after P: exact from an observe run, as the rule sees only the checks before it stops), and for
a stop run next to its observe run (same toy, images and seed): the model calls, wall time, images stopped, the
stop steps, and whether every reproduced image's decision, score and steps are the full run's.

    python benchmarks/early_stop.py --toy digits --counts 16:2,4:8,1:2,0:2 --seeds 0 --kind observe \\
        --out bench-out/early_stop/calib
    python benchmarks/early_stop.py --out bench-out/early_stop --analyse --patience 500 --samples 32
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from invmm import measure, preset
from invmm.analysis.population import count_upper
from invmm.data.images import ImageItem
from invmm.records import forward_equivalents
from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_dit_model, shipped_digits_model, shipped_digits_t2i_model
from invmm.zoo.digits import export_images, load_manifest, parse_level_counts, select_images

TOYS = {"digits": (shipped_digits_model, "ddpm"), "t2i": (shipped_digits_t2i_model, "sd"),
        "dit": (shipped_digits_dit_model, "dit")}


def run(toy: str, counts: str, seed: int, kind: str, patience: int, samples: int, max_steps: int | None, out: Path,
        batch_images: int) -> None:
    make, preset_name = TOYS[toy]
    model = make()
    manifest = load_manifest(model)
    chosen = select_images(manifest, parse_level_counts(counts))
    paths = export_images(manifest, out / "inputs", ids=[e["id"] for e in chosen])
    items = [ImageItem(id=e["id"], path=str(p), caption=e.get("caption") if toy == "t2i" else None,
                       class_label=str(e["class"]) if toy == "dit" else None) for e, p in zip(chosen, paths)]
    overrides = {"max_steps": max_steps} if max_steps else {}
    budget = max_steps or preset(preset_name).max_steps
    cfg = preset(preset_name, similarity="pixel", seed=seed, early_stop=True,
                 early_stop_patience=budget + 1 if kind == "observe" else patience, early_stop_samples=samples,
                 **overrides)
    folder = out / f"{toy}-{kind}-seed{seed}"
    t0 = time.perf_counter()
    measure(str(model), items, cfg, out=folder, batch_images=batch_images)
    meta = {"toy": toy, "counts": counts, "seed": seed, "kind": kind, "patience": cfg.early_stop_patience,
            "max_steps": cfg.max_steps, "check_every": cfg.check_every, "preset": preset_name,
            "levels": {e["id"]: e["copies"] for e in chosen}, "wall_s": round(time.perf_counter() - t0, 1)}
    (folder / "bench.json").write_text(json.dumps(meta, indent=1))
    print(f"{folder}: {meta['wall_s']} s", flush=True)


def stops_at(record, patience: int, samples: int, check_every: int) -> int | None:
    """Where the rule at `patience` with an examination of `samples` samples stops this observe-run record (None: it
    does not): at the first check at or after the patience, when no check up to it showed a sign and none of the
    examination's first `samples` samples there was a copy. Exact: the observe run examined at that check from
    the same stream (the patience must be one of early_stop.OBSERVED_STEPS)."""
    first_check = math.ceil(patience / check_every) * check_every
    if first_check >= record.steps:
        return None  # the budget, or the paper's success, comes first
    sign = record.early_stop["first_sign"]
    if sign is not None and sign <= first_check:
        return None
    exam = next(e for e in record.early_stop["exams"] if e[0] == first_check)
    return first_check if exam[4] is None or exam[4] >= samples else None


def full_calls(record) -> int:
    """The record's forward-equivalents as a run without the option spends them (no centre samples)."""
    calls = dict(record.calls)
    calls.pop("stop_forward", None)
    return forward_equivalents(calls)


def _observe_rows(runs, patience: int, samples: int):
    """Per observe run: (meta, records, reproduced, false stops, unreproduced, stopped unreproduced)."""
    out = []
    for (meta, records) in runs.values():
        if meta["kind"] != "observe":
            continue
        ok = [r for r in records if r.success]
        hopeless = [r for r in records if not r.success and r.status == "ok"]
        every = meta["check_every"]
        out.append((meta, records, ok, [r for r in ok if stops_at(r, patience, samples, every) is not None],
                    hopeless, [r for r in hopeless if stops_at(r, patience, samples, every) is not None]))
    return out


def analyse(out: Path, patience: int, samples: int, calibration: set[str]) -> None:
    runs = {}
    for bench in sorted(out.glob("**/bench.json")):
        meta = json.loads(bench.read_text())
        runs[(meta["toy"], meta["counts"], meta["seed"], meta["kind"])] = (meta, Ledger(bench.parent).read())
    print("## The observe runs (full budget; the evidence recorded)\n")
    print("| run | images | reproduced | first sign in the checks (step) | first examination with a copy (step) | "
          "success step | unreproduced: first sign in the checks |")
    print("|---|---|---|---|---|---|---|")
    for meta, records, ok, _, hopeless, _ in _observe_rows(runs, patience, samples):
        name = f"{meta['toy']} seed {meta['seed']}"
        exam = [next((e[0] for e in r.early_stop["exams"] if e[1]), None) for r in ok]
        print(f"| {name} | {len(records)} ({meta['counts']}) | {len(ok)} | "
              f"{', '.join(str(r.early_stop['first_sign']) for r in ok)} | {', '.join(map(str, exam))} | "
              f"{', '.join(str(r.steps) for r in ok)} | "
              f"{sum(r.early_stop['first_sign'] is not None for r in hopeless)} of {len(hopeless)} showed one |")
    print(f"\n## The rule at each patience and examination size (calibration runs: {', '.join(sorted(calibration))})\n")
    print("| patience | samples | false stops, calibration | false stops, held out | unreproduced stopped, "
          "calibration | unreproduced stopped, held out |")
    print("|---|---|---|---|---|---|")
    from invmm.inversion.early_stop import OBSERVED_STEPS

    for p in OBSERVED_STEPS:
        for m in (8, 16, 32):
            rows = _observe_rows(runs, p, m)
            part = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}
            for meta, _, ok, false, hopeless, stopped in rows:
                c = part[f"{meta['toy']}-{meta['seed']}" in calibration]
                c[0] += len(false)
                c[1] += len(ok)
                c[2] += len(stopped)
                c[3] += len(hopeless)
            cal, held = part[True], part[False]
            print(f"| {p} | {m} | {cal[0]} of {cal[1]} | {held[0]} of {held[1]} | {cal[2]} of {cal[3]} | "
                  f"{held[2]} of {held[3]} |")
    rows = _observe_rows(runs, patience, samples)
    false = sum(len(r[3]) for r in rows)
    reproduced = sum(len(r[2]) for r in rows)
    if reproduced:
        upper = count_upper(false, reproduced, 10**9) / 10**9
        print(f"\nAt patience {patience} with {samples} samples: {false} false stops of {reproduced} images reproduced "
              f"within the budget over every observe run; 95% upper bound on the rate {upper:.3f} (one-sided, "
              "exact: the binomial limit of the hypergeometric bound)")
    print("\n## Stop runs against their observe run (same toy, images, seed)\n")
    print("| run | images | not reproduced | stopped | stop steps | forward-equivalents full -> early (x fewer) | "
          "wall full (est.) -> early (x) | reproduced: same decision, steps, score (rel. 1e-4) |")
    print("|---|---|---|---|---|---|---|---|")
    for (toy, counts, seed, kind), (meta, records) in runs.items():
        if kind != "stop" or (toy, counts, seed, "observe") not in runs:
            continue
        full_meta, full = runs[(toy, counts, seed, "observe")]
        by_id = {r.id: r for r in full}
        stopped = [r for r in records if r.early_stop and r.early_stop.get("stopped")]
        steps = sorted(r.early_stop["step"] for r in stopped)
        calls_full = sum(full_calls(r) for r in full)
        calls_early = sum(forward_equivalents(r.calls) for r in records)
        same = [r for r in records if by_id[r.id].success]
        identical = sum(r.success and r.steps == by_id[r.id].steps and
                        abs(r.score - by_id[r.id].score) <= 1e-4 * abs(by_id[r.id].score) for r in same)
        span = f"{steps[0]}-{steps[-1]}" if steps else "-"
        # the observe run's wall holds its examinations at every observed step too: scaled by its calls to what a
        # run without the option spends (an estimate, labelled so)
        observed_calls = sum(forward_equivalents(r.calls) for r in full)
        wall_full = full_meta["wall_s"] * calls_full / observed_calls
        print(f"| {toy} seed {seed} | {len(records)} ({counts}) | {sum(not r.success for r in full)} | {len(stopped)} "
              f"| {span} | {calls_full:,} -> {calls_early:,} ({calls_full / calls_early:.2f}x) | "
              f"{wall_full:.0f} s (observed {full_meta['wall_s']:.0f} s) -> {meta['wall_s']:.0f} s "
              f"({wall_full / meta['wall_s']:.2f}x) | "
              f"{identical}/{len(same)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", choices=list(TOYS), default="digits")
    ap.add_argument("--counts", default="16:2,4:8,1:2,0:2")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--kind", choices=("observe", "stop"), default="observe")
    ap.add_argument("--patience", type=int, default=500)
    ap.add_argument("--max-steps", type=int, default=None, help="default: the preset's budget")
    ap.add_argument("--batch-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench-out/early_stop"))
    ap.add_argument("--samples", type=int, default=32, help="the examination's samples")
    ap.add_argument("--calibration", default="digits-0", help="TOY-SEED,...: the observe runs the rule was "
                                                              "calibrated on (the others are held out)")
    ap.add_argument("--analyse", action="store_true")
    args = ap.parse_args()
    if args.analyse:
        analyse(args.out, args.patience, args.samples, set(args.calibration.split(",")))
        return
    for seed in map(int, args.seeds.split(",")):
        run(args.toy, args.counts, seed, args.kind, args.patience, args.samples, args.max_steps, args.out,
            args.batch_images)


if __name__ == "__main__":
    main()
