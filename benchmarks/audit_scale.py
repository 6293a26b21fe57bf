"""Audit of >= 100 toy images (issue 5): wall time of the local backend vs Ray with 2 CPU actors, a kill -9
and resume (images lost / duplicated), and the report rendered in headless Chromium.

    python benchmarks/audit_scale.py --out bench-out/audit

Budget (both backends alike): --max-steps 150, checks every 50 steps with DDIM 20, B = 32, 8 images per
batch; the point is the machinery's cost and correctness, not the scores. Writes OUT/summary.md and
OUT/report-screenshot.png.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from invmm.store.files import Ledger
from invmm.zoo import shipped_digits_model
from invmm.zoo.digits import export_images, load_manifest, select_images


def audit_cmd(model, data, out, args, *extra):
    return [sys.executable, "-m", "invmm.cli", "audit", str(model), str(data), "--out", str(out),
            "--max-steps", str(args.max_steps), "--check-every", "50", "--sampler-steps", "20", "-k", "8",
            "--seed", "0", *extra]


def timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out/audit"))
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--kill-after", type=float, default=0.4, help="fraction of the ledger written before kill -9")
    args = ap.parse_args()
    model = shipped_digits_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, {64: 8, 16: 8, 1: 44, 0: 44})
    paths = export_images(manifest, args.out / "data" / "images", ids=[e["id"] for e in chosen])
    lines = ["path,label,caption"]
    for p, e in zip(paths, chosen):
        lines.append(f"images/{p.name},{'duplicated' if e['copies'] >= 16 else 'other'},{e['copies']} copies")
    data = args.out / "data" / "data.csv"
    data.write_text("\n".join(lines) + "\n")
    n = len(chosen)

    wall_local = timed(audit_cmd(model, data, args.out / "local", args))
    wall_ray = timed(audit_cmd(model, data, args.out / "ray", args, "--backend", "ray", "--workers", "2"))

    # kill -9 once part of the ledger is written, then resume with the same command.
    run = args.out / "killed"
    proc = subprocess.Popen(audit_cmd(model, data, run, args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ledger = run / "results.jsonl"
    while proc.poll() is None and (not ledger.exists() or ledger.read_text().count("\n") < args.kill_after * n):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = ledger.read_text().count("\n")
    wall_resume = timed(audit_cmd(model, data, run, args))
    ids = [r.id for r in Ledger(run).read()]
    lost = n - len(set(ids))
    duplicated = len(ids) - len(set(ids))
    ref = {r.id: (r.status, r.score, r.steps) for r in Ledger(args.out / "local").read()}
    ray = {r.id: (r.status, r.score, r.steps) for r in Ledger(args.out / "ray").read()}
    killed = {r.id: (r.status, r.score, r.steps) for r in Ledger(run).read()}
    same_killed = sum(killed.get(k) == v for k, v in ref.items())
    same_ray = sum(ray.get(k) == v for k, v in ref.items())
    reproduced = sum(1 for s, sc, _ in ref.values() if s == "ok" and sc != float("inf"))

    subprocess.run([sys.executable, "-m", "invmm.cli", "report", str(args.out / "local"), "--positive",
                    "duplicated"], check=True, stdout=subprocess.DEVNULL)
    shot = args.out / "report-screenshot.png"
    from invmm.report.browser import render

    dom, console = render(args.out / "local" / "report" / "index.html", shot, height=3000)
    script_ran = 'data-ready="yes"' in dom
    summary = [
        f"images: {n} (8 x 64 copies, 8 x 16 copies, 44 single-copy, 44 held out); budget {args.max_steps} steps",
        f"reproduced (local): {reproduced}/{n}",
        "",
        "| backend | wall s | images/h |",
        "|---|---|---|",
        "| local (1 process, torch threads 2) | "
        f"{wall_local:.0f} | {n / wall_local * 3600:.0f} |",
        f"| ray, 2 CPU actors (1 torch thread each) | {wall_ray:.0f} | {n / wall_ray * 3600:.0f} |",
        "",
        f"ray vs local: {same_ray}/{n} identical (status, score, steps)",
        f"kill -9 after {at_kill}/{n} ledger lines, resume {wall_resume:.0f} s: lost {lost}, "
        f"duplicated {duplicated}; {same_killed}/{n} identical to the uninterrupted run",
        f"report: {shot} (Chromium console lines: {len(console)}; sorting script ran: {script_ran})",
    ]
    text = "\n".join(summary)
    print(text)
    (args.out / "summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
