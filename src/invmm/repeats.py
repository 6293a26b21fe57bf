"""Repeated inversions of one image, and what a set of repeats says about its score.

One InvMM score is one run of a stochastic optimisation: its noise draws, timesteps and check samples come
from one stream, and the budget censors an image not reproduced in time at +inf. With `repeats` R > 1 an
image is inverted R times from independent streams; its summary is the success rate k/R, the median score
(+inf ordered last) and a distribution-free confidence interval for that median.

Why order statistics and not a bootstrap: with R of 3 to 10 the percentile bootstrap of a median can only
return observed values and its coverage is unknown and too low, while the interval [X_(j), X_(R+1-j)]
covers the true median with probability 1 - 2 P(Binomial(R, 1/2) < j) for any continuous score
distribution. It needs only ranks, so a censored +inf enters as "larger than every finite score" and
nothing is assumed about it. The coverage actually reached is reported beside every interval: with R <= 4
even [min, max] stays below 90% (75% at R = 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from invmm.functional import seed_from

CONFIDENCE = 0.9  # nominal coverage of the interval of a median


def repeat_seed(seed: int, image_id: str, repeat: int) -> int:
    """The stream of one repeat of one image. Repeat 0 is the stream a single run has always used, so a run
    with one repeat gives exactly the results it gave before repeats existed."""
    return seed_from(seed, image_id) if repeat == 0 else seed_from(seed, image_id, "repeat", repeat)


def median_score(scores: Sequence[float]) -> float:
    """The median with +inf ordered last; with an even count the mean of the middle two, so it is +inf
    as soon as half of the repeats failed."""
    if len(scores) == 0:
        return math.nan
    return float(np.median(np.asarray(scores, dtype=float)))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    coverage: float  # the probability that [low, high] holds the true median (order-statistic interval)


def median_interval(scores: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The narrowest symmetric order-statistic interval [X_(j), X_(n+1-j)] whose coverage reaches
    `confidence`; [min, max] with its lower coverage when none does. None for fewer than 2 scores."""
    x = sorted(float(s) for s in scores)
    n = len(x)
    if n < 2:
        return None

    def coverage(j: int) -> float:
        return float(1.0 - 2.0 * binom.cdf(j - 1, n, 0.5))

    j = 1
    for k in range(2, n // 2 + 1):
        if coverage(k) >= confidence:
            j = k
        else:
            break
    return Interval(x[j - 1], x[n - j], coverage(j))


def prob_lower(a: Sequence[float], b: Sequence[float]) -> float:
    """P(A < B) + P(A = B) / 2 for A, B drawn from the two sets of repeat scores: the chance that a repeat
    of image a scores lower (more memorized) than a repeat of image b. Two +inf count as a tie."""
    a = np.asarray(a, dtype=float)[:, None]
    b = np.asarray(b, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(((a < b) + 0.5 * (a == b)).mean())


def repeat_scores(result) -> list[float]:
    """The scores of an image's repeats (records.ImageSummary), or its one score (an InversionRecord)."""
    reps = getattr(result, "repeats", None)  # an InversionRecord has none
    if reps:
        return [rep_score(r) for r in reps if r.get("status", "ok") == "ok"]
    return [result.score]


def rep_score(rep: dict) -> float:
    return rep["score"] if rep.get("success") and rep.get("score") is not None else math.inf


def compare_scores(a, b) -> float:
    """The probability that image a's InvMM score is below image b's, over their repeats.

    `a` and `b` are results from a run with repeats (as `measure` returns them) or plain lists of repeat
    scores. 1.0: every repeat of a scored lower (more memorized) than every repeat of b; 0.5: the repeats
    do not tell the two apart, by order alone; 0.0: b is the more memorized. It compares the two images'
    observed repeats (the common-language effect size, U / (n_a n_b) of the Mann-Whitney test); it is
    not a p-value, and with 1 repeat each it is only 0, 0.5 or 1.
    """
    sa = a if isinstance(a, Sequence) else repeat_scores(a)
    sb = b if isinstance(b, Sequence) else repeat_scores(b)
    return prob_lower(sa, sb)
