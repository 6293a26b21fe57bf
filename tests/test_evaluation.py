import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from invmm.analysis.metrics import bootstrap_intervals, oriented, roc_metrics, tpr_at_fpr


def test_auc_matches_sklearn_in_both_directions():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    s = rng.normal(size=100) + y
    assert roc_metrics(y, s, higher_is_better=True)["auc"] == pytest.approx(roc_auc_score(y, s))
    assert roc_metrics(y, -s, higher_is_better=False)["auc"] == pytest.approx(roc_auc_score(y, s))


def test_inf_ranks_beyond_every_finite_score():
    # InvMM: lower = memorized, +inf = not reproduced; the positives (memorized) are the finite ones.
    y = [1, 1, 0, 0, 0]
    scores = [0.2, 0.9, math.inf, math.inf, 0.5]
    o = oriented(scores, higher_is_better=False)
    assert np.isfinite(o).all() and o[2] < o[4] and o[2] == o[3]
    ref = roc_auc_score(y, [-0.2, -0.9, -9, -9, -0.5])
    assert roc_metrics(y, scores, higher_is_better=False)["auc"] == pytest.approx(ref)


def test_tpr_at_fpr_on_a_hand_checked_example():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [9, 8, 3, 2, 7, 1, 0, -1, -2, -3]  # one negative (7) outranks two positives
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.5)  # before the negative at 7: 2 of 4 positives
    assert tpr_at_fpr(y, s, 1 / 6) == pytest.approx(1.0)  # after it, all positives at FPR 1/6


def test_bootstrap_intervals_bracket_the_estimate_and_follow_the_seed():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s = rng.normal(size=80) + 1.5 * y
    point = roc_metrics(y, s, higher_is_better=True)["auc"]
    ci = bootstrap_intervals(y, s, higher_is_better=True, n_boot=300, seed=3)
    assert ci["auc"][0] < point < ci["auc"][1] and 0 < ci["auc"][1] - ci["auc"][0] < 0.3
    assert ci == bootstrap_intervals(y, s, higher_is_better=True, n_boot=300, seed=3)
