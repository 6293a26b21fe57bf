"""From a partial audit to a statement about the whole training set: exact bounds on how many of N images a model
reproduces, from a census of one stratum (the screen's top K, or everything) and a simple random sample of the rest.

The quantity is always the same: the number D of the N images of the population that InvMM reproduces within the
run's budget and settings (with repeats: in at least one repeat; with a score cut: at a score <= S). The census
stratum is counted exactly (x). The other N - K images hold an unknown D_rest; a simple random sample of M of them
without replacement finds y, and y given D_rest is hypergeometric, so inverting the hypergeometric gives bounds
on D_rest with exact coverage: P(D_rest <= upper) >= confidence for every D_rest, the guarantee a release gate
needs (Clopper-Pearson's binomial bound would be conservative, as the sample is drawn without replacement).

Images whose outcome is unknown (an input error, or no result yet) are counted against the model: as reproduced
for an upper bound, as not reproduced for a lower one, so the bounds stay valid whatever they hold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy.stats import hypergeom

from invmm.errors import InvMMInputError

CONFIDENCE = 0.95


def count_upper(found: int, drawn: int, stratum: int, confidence: float = CONFIDENCE) -> int:
    """The exact one-sided upper confidence bound on how many of `stratum` images have the property, when a
    simple random sample of `drawn` of them without replacement found `found`: the largest D with
    P(Y <= found | D) > 1 - confidence. With the whole stratum drawn it is `found` itself."""
    _check(found, drawn, stratum)
    alpha = 1.0 - confidence
    lo, hi = found, stratum - (drawn - found)  # D cannot be below what was found, nor leave fewer non-found
    while lo < hi:  # P(Y <= found | D) falls as D grows: the last D where it stays above alpha
        mid = (lo + hi + 1) // 2
        if hypergeom.cdf(found, stratum, mid, drawn) > alpha:
            lo = mid
        else:
            hi = mid - 1
    return lo


def count_lower(found: int, drawn: int, stratum: int, confidence: float = CONFIDENCE) -> int:
    """The exact one-sided lower bound: the smallest D with P(Y >= found | D) > 1 - confidence."""
    _check(found, drawn, stratum)
    if found == 0:
        return 0
    alpha = 1.0 - confidence
    lo, hi = found, stratum - (drawn - found)
    while lo < hi:  # P(Y >= found | D) grows with D: the first D where it exceeds alpha
        mid = (lo + hi) // 2
        if hypergeom.sf(found - 1, stratum, mid, drawn) > alpha:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check(found: int, drawn: int, stratum: int) -> None:
    if not 0 <= found <= drawn <= stratum:
        raise ValueError(f"need 0 <= found <= drawn <= stratum, got {found}, {drawn}, {stratum}")


@dataclass(frozen=True)
class Counts:
    """What a design observed. `population` N; the census stratum of `census` images, `census_found` reproduced
    and `census_unknown` without an outcome; a sample of `drawn` of the other N - census images, `found`
    reproduced and `unknown` without an outcome (drawn = 0: no sample)."""

    population: int
    census: int
    census_found: int
    drawn: int = 0
    found: int = 0
    census_unknown: int = 0
    unknown: int = 0

    @property
    def rest(self) -> int:
        return self.population - self.census


@dataclass(frozen=True)
class Estimate:
    """Counts of the whole population: the point estimate, the one-sided bounds at `confidence` (what a gate
    decides on) and the two-sided interval at the same confidence (what a report shows). `upper` is None when
    nothing bounds it from above: images outside the census that no sample looked at."""

    count: float
    lower: int
    upper: int | None
    two_sided: tuple[int, int | None]
    confidence: float
    population: int

    def rate(self, value: float | None) -> float | None:
        return None if value is None else value / self.population

    def to_json(self) -> dict:
        d = asdict(self)
        d["rate"] = self.rate(self.count)
        d["rate_lower"], d["rate_upper"] = self.rate(self.lower), self.rate(self.upper)
        d["two_sided"] = list(self.two_sided)
        return d


def estimate(c: Counts, confidence: float = CONFIDENCE) -> Estimate:
    """The number of the N images reproduced: census count + (N - K) x sample share, with exact bounds."""
    if c.census > c.population or c.drawn > c.rest:
        raise ValueError(f"a census of {c.census} and a sample of {c.drawn} do not fit in {c.population} images")
    x_low, x_high = c.census_found, c.census_found + c.census_unknown
    if c.drawn == 0:  # no sample: the rest is unobserved (or there is no rest)
        upper = x_high if c.rest == 0 else None
        return Estimate(float(x_low) if c.rest == 0 else float("nan"), x_low, upper, (x_low, upper), confidence,
                        c.population)
    y_low, y_high = c.found, c.found + c.unknown
    point = c.census_found + c.rest * c.found / c.drawn
    two = 1.0 - (1.0 - confidence) / 2
    interval = (x_low + count_lower(y_low, c.drawn, c.rest, two), x_high + count_upper(y_high, c.drawn, c.rest, two))
    return Estimate(point, x_low + count_lower(y_low, c.drawn, c.rest, confidence),
                    x_high + count_upper(y_high, c.drawn, c.rest, confidence), interval, confidence, c.population)


def recall_interval(c: Counts, confidence: float = CONFIDENCE) -> dict | None:
    """The screen's recall: the share of the population's reproduced images that lie in the census stratum,
    x / (x + D_rest), with the interval that the two-sided interval on D_rest maps to (recall falls as D_rest
    grows, so the interval keeps its coverage). None without a sample of the rest."""
    if c.drawn == 0 or c.rest == 0:
        return None
    two = 1.0 - (1.0 - confidence) / 2
    x = c.census_found
    rest_point = c.rest * c.found / c.drawn
    lo_rest = count_lower(c.found, c.drawn, c.rest, two)
    hi_rest = count_upper(c.found + c.unknown, c.drawn, c.rest, two)

    def share(rest: float) -> float | None:
        return None if x + rest == 0 else x / (x + rest)

    return {"recall": share(rest_point), "lower": share(hi_rest), "upper": share(lo_rest), "confidence": confidence}


@dataclass(frozen=True)
class Policy:
    """A release policy: at most `max_rate` of the population reproduced (and at most `max_count` found), decided
    at `confidence`."""

    max_rate: float
    max_count: int | None = None
    confidence: float = CONFIDENCE

    def __post_init__(self):
        if not 0 <= self.max_rate <= 1:
            raise InvMMInputError(f"--max-rate is a share of the population in [0, 1], got {self.max_rate}")
        if not 0 < self.confidence < 1:
            raise InvMMInputError(f"--confidence must be in (0, 1), got {self.confidence}")
        if self.max_count is not None and self.max_count < 0:
            raise InvMMInputError(f"--max-count must be >= 0, got {self.max_count}")

    def to_json(self) -> dict:
        return asdict(self)


def decide(e: Estimate, found: int, policy: Policy) -> str:
    """go: the upper bound is within the policy (and no more than max_count found); no-go: the lower bound is
    above it, or more than max_count were found; undecided: neither."""
    allowed = policy.max_rate * e.population
    if (policy.max_count is not None and found > policy.max_count) or e.lower > allowed:
        return "no-go"
    if e.upper is not None and e.upper <= allowed:
        return "go"
    return "undecided"


def sample_size_for_go(rest: int, allowed_rest: float, confidence: float = CONFIDENCE) -> int | None:
    """The smallest sample of the `rest` images that, finding none reproduced, bounds their count by
    `allowed_rest` at `confidence` (the hypergeometric rule of three: about 3 / rate for 95%). None if even a
    census of them could not (allowed_rest < 0)."""
    if allowed_rest < 0:
        return None
    lo, hi = 0, rest
    while lo < hi:  # the upper bound after finding none falls as the sample grows
        mid = (lo + hi) // 2
        if count_upper(0, mid, rest, confidence) <= allowed_rest:
            hi = mid
        else:
            lo = mid + 1
    return lo


def more_to_decide(c: Counts, policy: Policy) -> dict | None:
    """How many more random images of the rest (beyond the `drawn` so far) must be inverted for the decision to
    be go or no-go, if the share found so far holds: the smallest total sample (searched up to the whole rest).
    None when no sample of the rest can decide (the census alone has settled it, or there is no rest)."""
    if c.rest == 0:
        return None
    share = (c.found + c.unknown) / c.drawn if c.drawn else 0.0

    def decision(m: int) -> str:
        y = round(share * m)
        e = estimate(Counts(c.population, c.census, c.census_found, m, y, c.census_unknown, 0), policy.confidence)
        return decide(e, c.census_found + y, policy)

    if decision(c.rest) == "undecided":
        return None
    lo, hi = max(c.drawn, 1), c.rest
    while lo < hi:
        mid = (lo + hi) // 2
        if decision(mid) != "undecided":
            hi = mid
        else:
            lo = mid + 1
    return {"sample": lo, "more": lo - c.drawn, "decision": decision(lo), "assuming_share": share}


def fmt_count(value: float | None) -> str:
    return "unbounded" if value is None else (f"{value:,.0f}" if math.isfinite(value) else "-")
