"""The model-level statistics (analysis/population.py) against scipy and against simulation."""

import numpy as np
import pytest
from scipy.stats import hypergeom

from invmm.analysis.population import (
    Counts,
    Policy,
    count_lower,
    count_upper,
    decide,
    estimate,
    more_to_decide,
    recall_interval,
    sample_size_for_go,
)


@pytest.mark.parametrize("found,drawn,stratum", [(0, 50, 1000), (3, 50, 1000), (7, 20, 60), (20, 20, 60), (0, 0, 10),
                                                 (5, 100, 100), (1, 300, 3_000)])
def test_the_bounds_invert_the_hypergeometric_exactly(found, drawn, stratum):
    """Against a brute force over every possible count D, with scipy's hypergeometric."""
    alpha = 0.05
    feasible = range(found, stratum - (drawn - found) + 1)
    up = max(d for d in feasible if hypergeom(stratum, d, drawn).cdf(found) > alpha)
    low = min(d for d in feasible if hypergeom(stratum, d, drawn).sf(found - 1) > alpha) if found else 0
    assert count_upper(found, drawn, stratum) == up and count_lower(found, drawn, stratum) == low
    with pytest.raises(ValueError):
        count_upper(drawn + 1, drawn, stratum)


def test_the_upper_bound_covers_at_least_its_confidence_for_every_true_count():
    """Exact coverage: for each true D, the chance over samples that D <= upper is >= 95% (computed, not drawn)."""
    stratum, drawn = 200, 40
    for d in range(0, stratum + 1, 7):
        dist = hypergeom(stratum, d, drawn)
        ys = np.arange(0, drawn + 1)
        covered = sum(dist.pmf(y) for y in ys if d <= count_upper(int(y), drawn, stratum))
        assert covered >= 0.95 - 1e-12, d
        low_cov = sum(dist.pmf(y) for y in ys if count_lower(int(y), drawn, stratum) <= d)
        assert low_cov >= 0.95 - 1e-12, d


def test_a_census_is_exact_and_a_screen_alone_bounds_only_from_below():
    census = estimate(Counts(population=500, census=500, census_found=12))
    assert (census.count, census.lower, census.upper, census.two_sided) == (12, 12, 12, (12, 12))
    top_only = estimate(Counts(population=500, census=50, census_found=12))
    assert top_only.lower == 12 and top_only.upper is None and np.isnan(top_only.count)
    assert decide(top_only, 12, Policy(max_rate=0.5)) == "undecided"
    assert decide(top_only, 12, Policy(max_rate=0.01)) == "no-go"  # 12 > 5 found already
    assert recall_interval(Counts(500, 50, 12)) is None


def test_the_estimate_adds_the_census_to_the_scaled_sample_and_unknowns_widen_the_bounds():
    c = Counts(population=10_050, census=50, census_found=4, drawn=200, found=2)
    e = estimate(c)
    assert e.count == pytest.approx(4 + 10_000 * 2 / 200)
    assert e.upper == 4 + count_upper(2, 200, 10_000) and e.lower == 4 + count_lower(2, 200, 10_000)
    assert e.two_sided == (4 + count_lower(2, 200, 10_000, 0.975), 4 + count_upper(2, 200, 10_000, 0.975))
    unsure = estimate(Counts(10_050, 50, 4, 200, 2, census_unknown=1, unknown=3))
    assert unsure.lower == e.lower and unsure.upper == 5 + count_upper(5, 200, 10_000)
    r = recall_interval(c)
    assert r["recall"] == pytest.approx(4 / (4 + 100)) and r["lower"] < r["recall"] < r["upper"]


def test_decisions_and_what_it_takes_to_decide():
    policy = Policy(max_rate=0.01)  # at most 1% of 30,000 = 300 images
    go = estimate(Counts(30_000, 100, 2, 1_000, 0))
    assert go.upper <= 300 and decide(go, 2, policy) == "go"
    assert decide(go, 2, Policy(max_rate=0.01, max_count=1)) == "no-go"  # more found than the policy allows
    nogo = estimate(Counts(30_000, 100, 40, 500, 30))
    assert nogo.lower > 300 and decide(nogo, 70, policy) == "no-go"
    unsure = Counts(30_000, 100, 2, 100, 1)
    assert decide(estimate(unsure), 3, policy) == "undecided"
    plan = more_to_decide(unsure, policy)
    assert plan["more"] > 0 and plan["decision"] == "no-go"  # 1% found in the sample: above the 1% once narrowed
    m = sample_size_for_go(10_000, 100)
    assert count_upper(0, m, 10_000) <= 100 < count_upper(0, m - 1, 10_000)
    assert 250 < m < 320  # the rule of three: about 3 / 1% = 300
    assert sample_size_for_go(10_000, -1) is None


def test_a_simulated_design_covers_the_true_count():
    """Draw a population with a known reproducible set, a census of the top and a random sample of the rest, many
    times: the one-sided upper bound holds in >= 95% of draws and the two-sided interval in >= 95%."""
    rng = np.random.default_rng(0)
    n, k, m = 2_000, 50, 150
    truth = np.zeros(n, bool)
    truth[rng.choice(n, 60, replace=False)] = True
    top = np.argsort(-(truth + rng.normal(0, 0.8, n)))[:k]  # a screen that ranks reproducible images higher
    rest = np.setdiff1d(np.arange(n), top)
    total = int(truth.sum())
    up_hits = two_hits = 0
    draws = 400
    for _ in range(draws):
        sample = rng.choice(rest, m, replace=False)
        e = estimate(Counts(n, k, int(truth[top].sum()), m, int(truth[sample].sum())))
        up_hits += total <= e.upper
        two_hits += e.two_sided[0] <= total <= e.two_sided[1]
    assert up_hits / draws >= 0.93 and two_hits / draws >= 0.93  # nominal 95%, 400 draws: a 2-SE margin
