"""Figures as PNG files (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: figures only ever go to files
    import matplotlib.pyplot as plt

    return plt


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str) -> Path:
    """ROC curves {name: (fpr, tpr, auc)} on linear and log-log axes side by side."""
    plt = _pyplot()
    fig, (lin, log) = plt.subplots(1, 2, figsize=(10, 4.6))
    floor = 1.0
    for fpr, tpr, _ in curves.values():
        nz = np.concatenate([fpr[fpr > 0], tpr[tpr > 0]])
        if nz.size:
            floor = min(floor, float(nz.min()))
    lo = 10 ** math.floor(math.log10(floor)) if floor < 1 else 1e-3
    lo = min(lo, 1e-3)
    for name, (fpr, tpr, auc) in curves.items():
        label = f"{name} (AUC {auc:.3f})"
        lin.plot(fpr, tpr, label=label)
        # Log axes cannot show 0: operating points at FPR (or TPR) 0 are drawn on the axis floor.
        log.plot(np.clip(fpr, lo, 1), np.clip(tpr, lo, 1), label=label, marker=".", markersize=3)
    for ax in (lin, log):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    lin.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    lin.set_title("ROC")
    log.set_xscale("log")
    log.set_yscale("log")
    log.plot([lo, 1], [lo, 1], color="grey", lw=0.8, ls="--")
    log.set_xlim(lo, 1.05)
    log.set_ylim(lo, 1.05)
    log.set_title("ROC, log-log (low-FPR regime)")
    lin.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histograms_png(scores: dict[str, dict[str, list[float]]], path: Path, title: str,
                   directions: dict[str, str] | None = None) -> Path:
    """One panel per scorer, a histogram per label of its finite scores; +inf counts go in the legend."""
    plt = _pyplot()
    names = list(scores)
    cols = min(3, len(names)) or 1
    rows = math.ceil(len(names) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        by_label = scores[name]
        finite_all = [v for vs in by_label.values() for v in vs if math.isfinite(v)]
        bins = np.histogram_bin_edges(finite_all, bins=20) if finite_all else 10
        for label, values in by_label.items():
            finite = [v for v in values if math.isfinite(v)]
            n_inf = sum(1 for v in values if math.isinf(v))
            text = f"{label} (n={len(values)}" + (f", {n_inf} inf)" if n_inf else ")")
            ax.hist(finite, bins=bins, alpha=0.55, label=text)
        sub = (directions or {}).get(name, "")
        ax.set_title(f"{name}" + (f" ({sub})" if sub else ""), fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def intervals_png(names: list[str], medians: list[float], lows: list[float | None], highs: list[float | None],
                  path: Path, title: str) -> Path:
    """Median score per image with its interval as an error bar, most memorized on top. An interval that
    reaches +inf (some repeats not reproduced) is drawn to the right edge with an arrow."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * n))
    finite = [v for v in [*medians, *(x for x in lows if x is not None), *(x for x in highs if x is not None)]
              if math.isfinite(v)]
    right = (max(finite) if finite else 1.0) * 1.15 or 1.0
    for i, (m, lo, hi) in enumerate(zip(medians, lows, highs)):
        y = n - 1 - i
        if lo is not None and hi is not None:
            ax.plot([lo, min(hi, right)], [y, y], color="tab:blue", lw=2, alpha=0.6)
            if math.isinf(hi):
                ax.annotate("", xy=(right, y), xytext=(right * 0.97, y),
                            arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        ax.plot([m], [y], "o", color="tab:red")
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(reversed(names)), fontsize=7)
    ax.set_xlim(0, right)
    ax.set_xlabel("InvMM score (median over repeats; lower = more memorized)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check_curves_png(runs: list[tuple[str, list[list[float]]]], beta: float, path: Path, title: str) -> Path:
    """Per repeat, the worst check sample's similarity and the KL at every success check against steps:
    how close an image that was not reproduced came to the threshold, and what the KL was doing."""
    plt = _pyplot()
    fig, (sim, kl) = plt.subplots(1, 2, figsize=(7.5, 2.4))
    for label, checks in runs:
        if not checks:
            continue
        steps = [c[0] for c in checks]
        sim.plot(steps, [c[3] for c in checks], marker=".", markersize=3, lw=1, label=label)
        kl.plot(steps, [c[1] for c in checks], marker=".", markersize=3, lw=1, label=label)
    sim.axhline(beta, color="grey", ls="--", lw=0.8)
    sim.set_ylabel("min similarity", fontsize=8)
    kl.set_ylabel("KL to N(0, I)", fontsize=8)
    for ax in (sim, kl):
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        kl.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pvalue_curve_png(curve: list[dict], alpha: float, path: Path, title: str) -> Path:
    """A dataset test's p-value against the number of suspect images: each random subset, and their median."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    floor = 1e-300  # a log axis cannot show 0
    for c in curve:
        ax.scatter([c["n"]] * len(c["draws"]), np.clip(c["draws"], floor, 1), s=8, color="grey", alpha=0.4)
    ax.plot([c["n"] for c in curve], np.clip([c["p_value"] for c in curve], floor, 1), marker="o",
            label="median over subsets")
    ax.axhline(alpha, color="black", ls="--", lw=0.8, label=f"alpha {alpha}")
    ax.set(xscale="log", yscale="log", xlabel="suspect images", ylabel="p-value", title=title)
    ax.set_xticks([c["n"] for c in curve], [str(c["n"]) for c in curve], minor=False)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def track_png(summary: dict, path: Path, top: int = 8) -> Path:
    """Memorization against training step (track.json): the share reproduced with its exact interval, the median
    score of the reproduced, and one line per image for the `top` images reproduced earliest (a missing point: not
    reproduced at that checkpoint)."""
    plt = _pyplot()
    rows = summary["checkpoints"]
    steps = [r["step"] for r in rows]
    fig, (share, score) = plt.subplots(1, 2, figsize=(11, 4.4))
    n = [r["population"] for r in rows]
    point = [r["reproduced"] / r["n"] if r["n"] and r["n"] == r["population"] else
             (r["estimate"] / r["population"] if r["estimate"] is not None else np.nan) for r in rows]
    lo = [r["lower"] / p for r, p in zip(rows, n)]
    hi = [(r["upper"] if r["upper"] is not None else p) / p for r, p in zip(rows, n)]
    share.fill_between(steps, lo, hi, alpha=0.25, step=None, label=f"{100 * rows[0]['confidence']:g}% exact interval")
    share.plot(steps, point, marker="o", label="share reproduced (estimate)")
    policy = summary.get("policy")
    if policy:
        share.axhline(policy["max_rate"], color="crimson", ls="--", lw=1, label=f"policy {policy['max_rate']:g}")
        if summary.get("last_safe") is not None:
            share.axvline(summary["last_safe"], color="green", ls=":", lw=1.2, label="last safe checkpoint")
    share.set_xlabel("training step")
    share.set_ylabel("share of the images reproduced")
    share.set_ylim(-0.02, 1.02)
    share.grid(alpha=0.3)
    share.legend(fontsize=8, loc="upper left")
    share.set_title("reproduced images")
    images = summary["images"]
    first = sorted((i for i, e in images.items() if e["onset"] is not None),
                   key=lambda i: (images[i]["onset"], i))[:top]
    for image in first:
        ys = [images[image]["scores"].get(str(s)) for s in steps]
        score.plot(steps, [np.nan if y is None else y for y in ys], marker=".", lw=0.8, alpha=0.7, label=image)
    medians = [r["median_score"] if r["median_score"] is not None else np.nan for r in rows]
    score.plot(steps, medians, color="black", lw=2.2, marker="o", label="median of the reproduced")
    score.set_xlabel("training step")
    score.set_ylabel("InvMM score (lower = more memorized)")
    score.grid(alpha=0.3)
    score.legend(fontsize=7, loc="best")
    score.set_title("scores of the reproduced images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
