"""Repeated inversions: the statistics against independent references, the streams, and the run folder."""

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from same_results import assert_same_result
from scipy.stats import mannwhitneyu, quantile_test
from typer.testing import CliRunner

from invmm import compare_scores, measure
from invmm.cli import app
from invmm.config import preset
from invmm.records import ImageSummary, InversionRecord, summarise
from invmm.repeats import median_interval, median_score, prob_lower
from invmm.store.artifacts import artifact_stem
from invmm.store.files import Ledger

runner = CliRunner()


# --- the statistics ---

@pytest.mark.parametrize("scores", [[0.3], [0.5, 0.2], [0.4, math.inf, 0.1], [0.2, math.inf], [math.inf] * 3,
                                    [0.9, 0.1, 0.5, 0.7, math.inf]])
def test_median_orders_inf_last(scores):
    assert median_score(scores) == statistics.median(scores)


def test_interval_matches_scipy_quantile_test_where_scipy_gives_one():
    rng = np.random.default_rng(0)
    checked = 0
    for n in range(2, 31):
        for conf in (0.75, 0.9, 0.95):
            x = rng.gamma(2.0, 0.3, size=n)
            x[rng.random(n) < 0.2] = np.inf  # censored repeats
            ref = quantile_test(x, q=0, p=0.5).confidence_interval(conf)
            mine = median_interval(x, conf)
            if np.isnan(ref.low) or np.isnan(ref.high):
                # scipy gives up when even [min, max] falls short (or only just reaches the level: its test is
                # strict); we return [min, max] and its coverage.
                assert (mine.low, mine.high) == (min(x), max(x)) and mine.coverage <= conf + 1e-12
                continue
            assert (mine.low, mine.high) == (ref.low, ref.high)
            assert mine.coverage >= conf
            checked += 1
    assert checked > 60


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5, 7])
def test_interval_coverage_holds_by_simulation(n):
    rng = np.random.default_rng(n)
    trials = 20000
    x = rng.lognormal(size=(trials, n))  # true median 1
    ivs = [median_interval(row) for row in x]
    hit = np.mean([iv.low <= 1.0 <= iv.high for iv in ivs])
    assert hit == pytest.approx(ivs[0].coverage, abs=0.01)
    assert {3: 0.75, 5: 0.9375, 7: 0.984375}[n] == pytest.approx(ivs[0].coverage)


def test_no_interval_from_one_repeat():
    assert median_interval([0.4]) is None


def test_prob_lower_is_the_mann_whitney_effect_size():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.choice([0.1, 0.2, 0.3, math.inf], size=rng.integers(1, 6))
        b = rng.choice([0.15, 0.2, 0.5, math.inf], size=rng.integers(1, 6))
        u = mannwhitneyu(b, a).statistic  # pairs with b > a, ties counted half
        assert prob_lower(a, b) == pytest.approx(u / (len(a) * len(b)))
    assert prob_lower([0.1, 0.2], [0.3, math.inf]) == 1.0
    assert prob_lower([math.inf], [math.inf]) == 0.5


def line(image_id, repeat, score, steps=100):
    ok = math.isfinite(score)
    return InversionRecord(id=image_id, path="", score=score, success=ok, steps=steps, repeat=repeat, seconds=1.0,
                  checks=[[steps, 0.5, 1.0, 0.99 if ok else 0.9]])


def test_combine_summarises_repeats_and_partial_success_reads_as_such():
    lines = [line("a", 2, 0.5, 300), line("b", 0, math.inf), line("a", 0, 0.3, 100), line("a", 1, math.inf, 2000),
             line("b", 1, math.inf)]
    a, b = summarise(lines)
    assert (a.id, a.n_repeats, a.successes) == ("a", 3, 2)
    assert a.score == 0.5 and a.success and a.steps == 300 and a.repeat == 2  # the median repeat's details
    assert (a.score_low, a.score_high, a.interval_coverage) == (0.3, math.inf, 0.75)
    assert [r["repeat"] for r in a.repeats] == [0, 1, 2] and a.repeats[1]["score"] is None
    assert math.isinf(b.score) and not b.success and b.successes == 0
    assert compare_scores(a, b) == pytest.approx((2 + 0.5) / 3)  # 0.3, 0.5 beat inf; inf ties inf
    back = ImageSummary.from_json(json.loads(json.dumps(a.to_json(), allow_nan=False)))
    assert math.isinf(back.score_high) and back.score_low == 0.3 and back.successes == 2


def test_combine_of_one_repeat_is_that_repeat():
    (r,) = summarise([line("a", 0, 0.42)])
    assert r.score == 0.42 and r.n_repeats == 1 and r.successes == 1 and r.score_low is None


def test_an_image_whose_repeats_all_failed_stays_an_error():
    err = InversionRecord(id="a", path="", status="error", error="NaN", score=math.nan)
    (r,) = summarise([err])
    assert r.status == "error" and r.n_repeats == 1


# --- the run folder and the commands ---

FAST = dict(similarity="pixel", max_steps=20, check_every=10, sampler_steps=5, batch_size=8, map_samples=0)


def test_measure_with_repeats_records_every_repeat_and_one_repeat_is_todays_result(tmp_path, toy_model, toy_images):
    paths = [p for p, _ in list(toy_images.values())[:2]]
    single = measure(str(toy_model), paths, preset("ddpm", **FAST), out=tmp_path / "r1", batch_images=4)
    three = measure(str(toy_model), paths, preset("ddpm", **FAST), out=tmp_path / "r3", batch_images=4, repeats=3)
    lines = Ledger(tmp_path / "r3").read()
    assert sorted((r.id, r.repeat) for r in lines) == sorted((r.id, k) for r in single for k in range(3))
    for one, many in zip(single, three):
        assert one.n_repeats == 1 and many.n_repeats == 3 and len(many.repeats) == 3
        rep0 = next(r for r in lines if r.id == one.id and r.repeat == 0)
        assert_same_result(rep0, one)  # other batch mates: the batching tolerance (a CI machine differed at 1e-6)
        for k in range(3):
            stem = artifact_stem(tmp_path / "r3", one.id, k)
            assert stem.name.endswith(f".r{k}" if k else stem.name) and Path(f"{stem}.safetensors").exists()
    info = json.loads((tmp_path / "r3" / "run.json").read_text())
    assert info["repeats"] == 3


def test_audit_resume_with_more_repeats_adds_them_and_keeps_the_rest(tmp_path, toy_model, toy_images):
    data = tmp_path / "data"
    data.mkdir()
    for p, _ in list(toy_images.values())[:3]:
        (data / p.name).write_bytes(p.read_bytes())
    opts = ["--max-steps", "20", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "8"]
    out = tmp_path / "run"
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(out), *opts])
    assert res.exit_code == 0, res.output
    before = {(r.id, r.repeat): r.to_json() for r in Ledger(out).read()}
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(out), "--repeats", "2", *opts])
    assert res.exit_code == 0, res.output
    assert "3 images x 2 repeats = 6 inversions; 3 already done, 3 scored now" in res.output
    after = {(r.id, r.repeat): r.to_json() for r in Ledger(out).read()}
    assert len(after) == 6 and all(after[k] == v for k, v in before.items())

    res = runner.invoke(app, ["export", str(out)])
    assert res.exit_code == 0, res.output
    header, *rows = (out / "results.csv").read_text().splitlines()
    assert "successes" in header and "score_low" in header and len(rows) == 3
    res = runner.invoke(app, ["export", str(out), "--per-repeat", "--out", str(tmp_path / "long.csv")])
    assert res.exit_code == 0, res.output
    header, *rows = (tmp_path / "long.csv").read_text().splitlines()
    assert "repeat" in header.split(",") and len(rows) == 6

    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "report" / "index.html").read_text()
    assert "repeats per image" in page and "similarity and KL" in page


def test_measure_table_shows_the_success_rate_and_interval(tmp_path, toy_model, toy_images):
    p = next(iter(toy_images.values()))[0]
    res = runner.invoke(app, ["measure", str(toy_model), str(p), "--out", str(tmp_path / "m"), "--repeats", "3",
                              "--max-steps", "20", "--check-every", "10", "--sampler-steps", "5",
                              "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "reproduced" in res.output and "/3" in res.output and "(75%)" in res.output
