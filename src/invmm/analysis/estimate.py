"""`invmm estimate`: what an audit will cost before it starts.

Model calls per image follow from the preset and the budget alone (cost.py counts the same quantities
while a run goes). An image that is never reproduced is the worst case: it runs every step and every
check. Its checks cost between two bounds: every (scale) stopped as early as the check allows, after the
first round's sample, or the preview, or skipped on the reconstruction loss (what a clearly unmemorized
image costs), and every sample of every scale generated (an image whose samples keep almost passing).
Seconds come from a short probe on the device: a few optimisation steps and one failing check on a full
batch of the user's first image.
"""

from __future__ import annotations

import time

import torch

from invmm.config import InvMMConfig
from invmm.inversion import Inverter, Target
from invmm.inversion.cost import sample_forwards
from invmm.records import forward_equivalents


def checks_per_image(config: InvMMConfig) -> int:
    return config.max_steps // config.check_every


def check_forwards(adapter, config: InvMMConfig, samples_per_scale: int, sampler_steps: int | None = None) -> int:
    """Denoiser forwards of one failing check that generates `samples_per_scale` samples at every scale."""
    steps = len(adapter.check_timesteps(sampler_steps or config.sampler_steps, config.check_schedule))
    scales = config.guidance_scales if adapter.conditional else [1.0]
    kind = adapter.guidance_kind
    return samples_per_scale * sum(sample_forwards(steps, adapter.conditional, s, kind) for s in scales)


def worst_case_calls(adapter, config: InvMMConfig) -> dict:
    """Denoiser calls of an image never reproduced: {"low": each check stops as early as it can, "high":
    every sample generated}. Early means after the first round, or after the preview where one is on, or
    no check at all where checks are skipped on the reconstruction loss (check_skip_rec)."""
    opt = config.max_steps * config.batch_size
    first = config.check_rounds[0] if config.check_rounds and config.eta == 0 else config.n_check_samples
    first = min(first, config.n_check_samples)
    preview = check_forwards(adapter, config, 1, config.check_preview_steps) if config.check_preview_steps else 0
    per_check = {"low": preview or check_forwards(adapter, config, first),
                 "high": preview + check_forwards(adapter, config, config.n_check_samples)}
    if config.check_skip_rec is not None:
        per_check["low"] = 0
    # The memorization map at the last check: m prior samples and the rows the decided check lacks (m - first
    # when it stopped after its first round, none when it generated all), at one scale (the costliest here).
    n = min(config.map_samples, config.n_check_samples)
    one = max(check_forwards(adapter, config.replace(guidance_scales=[s]), 1)
              for s in (config.guidance_scales if adapter.conditional else [1.0]))
    map_rows = {"low": n + max(0, n - first), "high": n} if n else {"low": 0, "high": 0}
    out = {}
    for name, forwards in per_check.items():
        calls = {"opt_forward": opt, "opt_backward": opt, "check_forward": checks_per_image(config) * forwards,
                 "map_forward": map_rows[name] * one}
        out[name] = {**calls, "forward_equivalents": forward_equivalents(calls)}
    return out


def early_stop_calls(adapter, config: InvMMConfig) -> dict:
    """With --early-stop: the step where an image that never shows a sign of a copy stops (the first check at or
    after the patience, or the budget) and its denoiser calls at the low bound of worst_case_calls (each check
    stopped after its first round), plus the examination's samples (at the first guidance scale: the cheapest;
    the rule examines at the scale the last check came closest at)."""
    stop = min(-(-config.early_stop_patience // config.check_every) * config.check_every, config.max_steps)
    short = config.replace(max_steps=stop)
    calls = dict(worst_case_calls(adapter, short)["low"])
    first = config.guidance_scales[0] if adapter.conditional else 1.0
    calls["stop_forward"] = check_forwards(adapter, config.replace(guidance_scales=[first]), config.early_stop_samples)
    calls.pop("forward_equivalents")
    return {"stop_step": stop, "calls": {**calls, "forward_equivalents": forward_equivalents(calls)}}


def probe_seconds(adapter, config: InvMMConfig, similarity, pixels: torch.Tensor, *, batch_images: int,
                  steps: int = 3) -> dict:
    """Seconds per optimisation step and per failing check, per image, measured on a full batch."""
    cfg = config.replace(threshold=2.0, check_every=10**9, max_steps=10**9)  # no check unless asked; none passes
    inv = Inverter(adapter, cfg, similarity, batch_images=batch_images)
    states = [inv.start(Target(id=f"probe-{i}", pixels=pixels)) for i in range(batch_images)]
    inv.step(states)  # warm-up: first calls allocate
    t0 = time.perf_counter()
    for _ in range(steps):
        inv.step(states)
    step_s = (time.perf_counter() - t0) / steps / batch_images
    t0 = time.perf_counter()
    inv.check(states)
    check_s = (time.perf_counter() - t0) / batch_images
    return {"step_s": step_s, "check_s": check_s, "batch_images": batch_images, "probe_steps": steps}


def estimate(adapter, config: InvMMConfig, n_images: int, similarity, pixels: torch.Tensor, *,
             batch_images: int = 8, repeats: int = 1) -> dict:
    calls = worst_case_calls(adapter, config)
    probe = probe_seconds(adapter, config, similarity, pixels, batch_images=batch_images)
    per_image_s = config.max_steps * probe["step_s"] + checks_per_image(config) * probe["check_s"]
    inversions = n_images * repeats
    out = {
        "images": n_images, "repeats": repeats, "preset": config.preset, "max_steps": config.max_steps,
        "checks_per_image": checks_per_image(config), "calls_per_image": calls, "probe": probe,
        "seconds_per_image_not_reproduced": per_image_s,
        "hours_worst_case": inversions * per_image_s / 3600,
        "device": str(adapter.device),
    }
    if config.early_stop:
        stop = early_stop_calls(adapter, config)
        # the examination: m samples where a failing check generates one at each scale, an upper bound of m checks
        checks = stop["stop_step"] // config.check_every + config.early_stop_samples
        stopped_s = stop["stop_step"] * probe["step_s"] + checks * probe["check_s"]
        out["early_stop"] = {
            **stop, "patience": config.early_stop_patience, "seconds_per_image_stopped": stopped_s,
            "fewer_calls_per_stopped_image": calls["low"]["forward_equivalents"] / stop["calls"]["forward_equivalents"],
            "hours_if_every_image_stops": inversions * stopped_s / 3600,
            "prediction": "a prediction: only images that show no sign of a copy by the patience stop; "
                          "how many do is measured per toy in docs/benchmarks/early-stopping.md"}
    return out


def format_estimate(e: dict) -> str:
    low, high = e["calls_per_image"]["low"], e["calls_per_image"]["high"]
    rows = [
        ("images x repeats", f"{e['images']} x {e['repeats']}"),
        ("budget", f"{e['max_steps']} steps, {e['checks_per_image']} checks (preset {e['preset']})"),
        ("denoiser forwards per image, optimisation", f"{low['opt_forward']:,} (+ as many backwards)"),
        ("denoiser forwards per image, checks", f"{low['check_forward']:,} (each check stops as early as it can) "
                                                 f"to {high['check_forward']:,} (every sample generated)"),
        ("forward-equivalents per image", f"{low['forward_equivalents']:,} to {high['forward_equivalents']:,}"),
        ("probe on " + e["device"], f"{e['probe']['step_s'] * 1000:.1f} ms per step, {e['probe']['check_s']:.2f} s "
                                    f"per failing check, per image (batch of {e['probe']['batch_images']})"),
        ("seconds per image not reproduced", f"{e['seconds_per_image_not_reproduced']:.1f}"),
        ("hours, worst case (nothing reproduced)", f"{e['hours_worst_case']:.2f}"),
    ]
    if "early_stop" in e:
        es = e["early_stop"]
        rows += [
            ("with --early-stop (a prediction)", f"an image with no sign of a copy by step {es['patience']:,} stops "
                                                 f"at step {es['stop_step']:,}: {es['calls']['forward_equivalents']:,} "
                                                 f"forward-equivalents, {es['fewer_calls_per_stopped_image']:.1f}x "
                                                 "fewer than its full budget; an image with a sign runs the budget"),
            ("hours if every image stops", f"{es['hours_if_every_image_stops']:.2f} (the best case; how many stop "
                                           "is measured per toy in docs/benchmarks/early-stopping.md)"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
