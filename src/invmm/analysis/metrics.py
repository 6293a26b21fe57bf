"""How well a score separates two labelled groups: ROC AUC, TPR at low FPR, bootstrap intervals.

Scores are oriented so that higher means "positive" (member / memorized) before any metric: a scorer's
`higher_is_better = False` flips them. InvMM's +inf (not reproduced) ranks below every finite score.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def oriented(scores, higher_is_better: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    s = s if higher_is_better else -s
    finite = s[np.isfinite(s)]
    span = (finite.max() - finite.min() + 1.0) if finite.size else 1.0
    lo, hi = (finite.min() - span, finite.max() + span) if finite.size else (-1.0, 1.0)
    # Replace infinities by values beyond every finite score, keeping their order (sklearn refuses inf).
    return np.where(s == -np.inf, lo, np.where(s == np.inf, hi, s))


def tpr_at_fpr(labels, scores, fpr_target: float) -> float:
    """The highest TPR over ROC operating points whose FPR does not exceed the target."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_metrics(labels, scores, *, higher_is_better: bool) -> dict:
    y = np.asarray(labels, dtype=int)
    s = oriented(scores, higher_is_better)
    return {"auc": float(roc_auc_score(y, s)), "tpr@1%fpr": tpr_at_fpr(y, s, 0.01),
            "tpr@0.1%fpr": tpr_at_fpr(y, s, 0.001)}


def bootstrap_intervals(labels, scores, *, higher_is_better: bool, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """Percentile intervals of each metric over resamples (with replacement) of the labelled images."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue  # a resample with one class has no ROC
        for k, v in roc_metrics(y[idx], s[idx], higher_is_better=higher_is_better).items():
            draws.setdefault(k, []).append(v)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {k: [float(x) for x in np.percentile(v, q)] for k, v in draws.items()}
