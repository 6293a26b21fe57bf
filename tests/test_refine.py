"""The refined score (inversion/refine.py): its math against independent references, and that it leaves the
paper's score exactly as it was."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from invmm.config import preset
from invmm.families import load_adapter
from invmm.functional import all_pass_probability, any_pass_probability, expected_first_success
from invmm.inversion import Inverter, Target
from invmm.inversion.refine import BACK_FLOOR
from invmm.similarity import PixelSimilarity


@pytest.mark.parametrize("copies,samples,n", [(32, 32, 8), (29, 32, 8), (7, 32, 8), (12, 16, 8), (5, 5, 3)])
def test_all_pass_probability_is_the_hypergeometric_chance_that_n_drawn_are_all_copies(copies, samples, n):
    assert all_pass_probability(copies, samples, n) == pytest.approx(hypergeom(samples, copies, n).pmf(n))


def test_all_pass_probability_is_unbiased_for_p_to_the_n():
    rng = np.random.default_rng(0)
    p, n, samples = 0.9, 8, 32
    estimates = [all_pass_probability(int(k), samples, n) for k in rng.binomial(samples, p, size=20000)]
    assert np.mean(estimates) == pytest.approx(p**n, abs=0.005)  # p^8 = 0.430; the plug-in k/N^8 is biased low
    with pytest.raises(ValueError):
        all_pass_probability(3, 4, 8)


@pytest.mark.parametrize("seed", range(4))
def test_any_pass_probability_is_the_share_of_all_checks_the_samples_make_that_pass(seed):
    """Brute force over every 8-subset of 12 samples: the share that are all copies at one scale at least."""
    import itertools

    rng = np.random.default_rng(seed)
    scales = 3
    copy = rng.random((12, scales)) < rng.uniform(0.6, 0.95, size=scales)
    masks = [int(sum(int(c) << k for k, c in enumerate(row))) for row in copy]
    subsets = list(itertools.combinations(range(12), 8))
    share = sum(any(copy[list(sub), k].all() for k in range(scales)) for sub in subsets) / len(subsets)
    assert any_pass_probability(masks, scales, 8) == pytest.approx(share, abs=1e-12)
    single = [m & 1 for m in masks]
    assert any_pass_probability(single, 1, 8) == pytest.approx(all_pass_probability(sum(single), 12, 8))


def test_expected_first_success_matches_a_simulated_first_passage():
    points = [(0.1, 0.05), (0.2, 0.3), (0.25, 0.6), (0.4, 0.2)]
    rng = np.random.default_rng(1)
    draws = []
    for _ in range(50000):
        for kl, p in points:
            if rng.random() < p:
                draws.append(kl)
                break
        else:
            draws.append(points[-1][0])  # no check passed: the leftover mass sits on the last KL
    mean, sd, leftover = expected_first_success(points)
    assert mean == pytest.approx(np.mean(draws), abs=0.002)
    assert sd == pytest.approx(np.std(draws), abs=0.002)
    assert leftover == pytest.approx(0.95 * 0.7 * 0.4 * 0.8)
    assert expected_first_success([(0.3, 1.0), (0.9, 1.0)]) == (0.3, 0.0, 0.0)


def targets(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Target(id=f"img-{i}", pixels=torch.rand(1, 8, 8, generator=g) * 2 - 1) for i in range(n)]


def small_config(**kw):
    base = dict(similarity="pixel", batch_size=4, check_every=5, window=5, max_steps=40, sampler_steps=5,
                check_rounds=[], refine_samples=16, refine_max_checks=3)
    base.update(kw)
    return preset("ddpm", **base)


@pytest.fixture(scope="module")
def adapter(tiny_model):
    return load_adapter(str(tiny_model))


@pytest.fixture(scope="module")
def threshold(adapter):
    """A threshold most samples of the tiny (untrained) model pass, so checks pass now and then by luck."""
    probe = Inverter(adapter, small_config(threshold=1.5), PixelSimilarity(), batch_images=4).run(targets(4))
    sims = sorted(v for o in probe for v in o.result.similarities)
    return sims[len(sims) // 8]


def run(adapter, cfg, ts, k):
    return {o.result.id: o for o in Inverter(adapter, cfg, PixelSimilarity(), batch_images=k).run(ts)}


@pytest.fixture(scope="module")
def paired(adapter, threshold):
    """Each image alone (one batch slot), with and without the refinement."""
    ts = targets(4)
    plain = {t.id: run(adapter, small_config(threshold=threshold), [t], 1)[t.id] for t in ts}
    refined = {t.id: run(adapter, small_config(threshold=threshold, refine=True), [t], 1)[t.id] for t in ts}
    assert sum(o.result.success for o in plain.values()) >= 2, "the scenario needs successes"
    return plain, refined


def test_the_refinement_leaves_the_paper_score_bit_identical(paired):
    plain, refined = paired
    for i, p in plain.items():
        a, b = p.result, refined[i].result
        assert (a.score, a.success, a.steps, a.kl, a.similarities, a.checks, a.final_lambda) == \
               (b.score, b.success, b.steps, b.kl, b.similarities, b.checks, b.final_lambda)
        assert torch.equal(p.mu, refined[i].mu) and torch.equal(p.samples, refined[i].samples)
        assert a.refined_score is None and b.refined_score is not None
        if not a.success:
            assert math.isinf(b.refined_score) and b.refine is None


def test_the_refined_score_is_the_expectation_over_its_points(paired):
    _, refined = paired
    for o in refined.values():
        r = o.result
        if not r.success:
            continue
        pts = r.refine["points"]
        steps = [p[0] for p in pts]
        assert r.steps in steps and steps == sorted(steps)
        assert all(b - a == 5 for a, b in zip(steps, steps[1:])), "consecutive checks"
        probs = [all_pass_probability(c, n, 8) for _, _, c, n, _ in pts]
        assert probs == pytest.approx([p[4] for p in pts], abs=1e-12)
        assert r.refined_score == pytest.approx(expected_first_success([(p[1], q) for p, q in zip(pts, probs)])[0])
        # The walk back stops at the first check, or after a check that could hardly have passed.
        assert steps[0] == 5 or probs[0] < BACK_FLOOR or steps.index(r.steps) == 3
        # Paper checks walked back over: the same distributions (KL) the paper checked.
        paper_kl = {c.step: c.kl for c in r.checks}
        for step, kl, *_ in pts:
            if step <= r.steps:
                assert kl == paper_kl[step]
        assert r.refine["extra_steps"] == max(steps) - r.steps


def test_the_continued_path_is_the_path_of_a_run_that_never_stopped(adapter, paired, threshold):
    _, refined = paired
    never = run(adapter, small_config(threshold=1.5, max_steps=60), targets(4), 1)
    continued = [o for o in refined.values() if o.result.success and o.result.refine["extra_steps"] > 0]
    assert continued, "the scenario needs a refinement past the success"
    for o in continued:
        kl_never = {c.step: c.kl for c in never[o.result.id].result.checks}
        for step, kl, *_ in o.result.refine["points"]:
            assert kl == kl_never[step]


def test_the_calls_include_the_refinements_forwards(adapter, paired):
    plain, refined = paired
    check_steps = len(adapter.check_timesteps(5, "paper"))
    for i, o in refined.items():
        r, p = o.result, plain[i].result
        if not r.success:
            assert r.calls == p.calls
            continue
        extra = r.refine["calls"]
        assert extra["check_forward"] == len(r.refine["points"]) * 16 * check_steps
        assert extra.get("opt_forward", 0) == r.refine["extra_steps"] * 4
        assert {k: r.calls[k] - extra.get(k, 0) for k in r.calls} == p.calls


def test_refined_scores_are_deterministic_and_batching_keeps_decisions(adapter, paired, threshold):
    _, alone = paired
    cfg = small_config(threshold=threshold, refine=True)
    batched = run(adapter, cfg, targets(4), 3)
    again = run(adapter, cfg, targets(4), 3)
    for i, o in batched.items():
        assert o.result.refined_score == again[i].result.refined_score
        assert o.result.refine == again[i].result.refine
        a = alone[i].result
        assert (o.result.success, o.result.steps) == (a.success, a.steps)
        if a.success:  # batch shapes change float rounding only (KL within 1e-4 relative)
            assert o.result.refined_score == pytest.approx(a.refined_score, rel=1e-4)


def test_refine_settings_are_checked():
    with pytest.raises(ValueError, match="refine_samples"):
        preset("ddpm", refine_samples=4)
    with pytest.raises(ValueError, match="refine_tail"):
        preset("ddpm", refine_tail=1.0)


# --- through the commands: audit, resume, export, report, compare ---

def _audit(model, data, out, *extra):
    from typer.testing import CliRunner

    from invmm.cli import app

    opts = ["--max-steps", "30", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "8",
            "--similarity", "pixel", "--threshold", "0.3", "--refine-samples", "8"]
    return CliRunner().invoke(app, ["audit", str(model), str(data), "--out", str(out), *opts, *extra])


def test_an_audit_with_the_refinement_resumes_exports_reports_and_compares(tmp_path, toy_model, toy_images):
    from typer.testing import CliRunner

    from invmm.cli import app
    from invmm.runs.files import Ledger

    runner = CliRunner()
    data = tmp_path / "data"
    data.mkdir()
    for p, _ in list(toy_images.values())[:3]:
        (data / p.name).write_bytes(p.read_bytes())
    full = tmp_path / "full"
    res = _audit(toy_model, data, full, "--refine")
    assert res.exit_code == 0, res.output
    lines = (full / "results.jsonl").read_text().splitlines()
    records = Ledger(full).read()
    assert len(records) == 3 and any(r.success for r in records), "the scenario needs a success"
    for r in records:
        assert r.refined_score is not None
        assert math.isfinite(r.refined_score) == r.success
        assert (r.refine is not None) == r.success

    # An interrupted audit resumed: the images not yet written are scored as the full run scored them.
    part = tmp_path / "part"
    res = _audit(toy_model, data, part, "--refine")
    (part / "results.jsonl").write_text(lines[0] + "\n")
    res = _audit(toy_model, data, part, "--refine")
    assert res.exit_code == 0, res.output
    assert "1 already done" in res.output
    key = lambda r: r.id  # noqa: E731
    after = {key(r): r.to_json() for r in Ledger(part).read()}
    for r in records:
        mine = after[key(r)]
        assert (mine["score"], mine.get("refined_score"), mine.get("refine", {}) and mine["refine"]["points"]) == \
               (r.to_json()["score"], r.to_json().get("refined_score"), r.refine and r.refine["points"])
    # Resuming without the refinement is another setting: refused, nothing written.
    res = _audit(toy_model, data, part)
    assert res.exit_code != 0 and "refine" in res.output
    assert len(Ledger(part).read()) == 3

    res = runner.invoke(app, ["export", str(full)])
    assert res.exit_code == 0, res.output
    header, *rows = (full / "results.csv").read_text().splitlines()
    assert "refined_score" in header.split(",")
    res = runner.invoke(app, ["report", str(full), "--rank-by", "refined"])
    assert res.exit_code == 0, res.output
    assert "Every score in this report is the refined score" in (full / "report" / "index.html").read_text()
    res = runner.invoke(app, ["compare", str(full), str(part), "--by", "refined"])
    assert res.exit_code == 0, res.output

    one = next(iter(sorted(data.iterdir())))
    res = runner.invoke(app, ["measure", str(toy_model), str(one), "--out", str(tmp_path / "m"), "--refine",
                              "--max-steps", "30", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "8",
                              "--similarity", "pixel", "--threshold", "0.3", "--refine-samples", "8"])
    assert res.exit_code == 0, res.output
    head = res.stdout.splitlines()[0].split()
    assert head[:3] == ["image", "score", "refined"] and "refined: the paper's score averaged" in res.output

    plain = tmp_path / "plain"
    assert _audit(toy_model, data, plain).exit_code == 0
    res = runner.invoke(app, ["report", str(plain), "--rank-by", "refined"])
    assert res.exit_code != 0 and "without the refinement" in res.output
    res = runner.invoke(app, ["report", str(plain), "--rank-by", "best"])
    assert res.exit_code != 0 and "paper" in res.output


def test_the_invmm_scorer_scores_by_the_refined_score_when_asked(adapter, paired, threshold):
    from invmm.scorers import build_scorer

    _, alone = paired
    spec = (f"invmm:by=refined,similarity=pixel,threshold={threshold},batch_size=4,check_every=5,window=5,"
            "max_steps=40,sampler_steps=5,check_rounds=[],refine_samples=16,refine_max_checks=3,batch_images=1")
    scorer = build_scorer(spec, adapter)
    ts = targets(4)
    scores = scorer.score(torch.stack([t.pixels for t in ts]), [t.id for t in ts])
    for t, s in zip(ts, scores):
        assert s == alone[t.id].result.refined_score
        assert scorer.pop_details(t.id)["refined_score"] == (s if math.isfinite(s) else None)
    assert scorer.settings()["by"] == "refined" and scorer.config.refine


def test_refined_scores_survive_the_ledger_and_summaries_rank_by_them():
    from invmm.errors import InvMMInputError
    from invmm.records import InversionRecord, summarise

    def rec(i, rep, score, refined):
        return InversionRecord(id=i, path="", score=score, success=math.isfinite(score), repeat=rep,
                               refined_score=refined, refine={"sd": 0.0} if math.isfinite(score) else None)

    lines = [rec("a", 0, 0.2, 0.3), rec("a", 1, 0.5, 0.35), rec("a", 2, math.inf, math.inf),
             rec("b", 0, 0.1, 0.6), rec("b", 1, 0.4, 0.5), rec("b", 2, 0.3, 0.55)]
    back = [InversionRecord.from_json(r.to_json()) for r in lines]
    assert [(r.score, r.refined_score, r.refine) for r in back] == [(r.score, r.refined_score, r.refine)
                                                                    for r in lines]
    paper = {s.id: s for s in summarise(back)}
    refined = {s.id: s for s in summarise(back, by="refined")}
    assert paper["a"].score == 0.5 and paper["b"].score == 0.3  # the medians, inf last
    assert paper["a"].refined_score == 0.35 and paper["b"].refined_score == 0.55
    assert refined["a"].score == 0.35 and refined["b"].score == 0.55
    assert refined["a"].successes == 2 and refined["a"].score_high == math.inf
    plain = InversionRecord(id="c", path="", score=0.2, success=True)
    assert "refined_score" not in plain.to_json()  # runs without the refinement: lines as they were
    with pytest.raises(InvMMInputError, match="without the refinement"):
        summarise([plain], by="refined")


def test_with_several_guidance_scales_every_sample_is_judged_at_every_scale(tiny_family):
    """A text-to-image model checked at two scales: the estimate counts every sample at both (each sample's copy
    bits in the ledger), and the refined score is the expectation over the chance of passing at either."""
    from invmm.families import load_adapter as load
    from invmm.functional import expected_first_success as efs

    adapter = load(str(tiny_family("sd")))
    size = adapter.image_size
    g = torch.Generator().manual_seed(0)
    ts = [Target(id=f"img-{i}", pixels=torch.rand(3, size, size, generator=g) * 2 - 1, caption="a photo")
          for i in range(2)]
    cfg = preset("sd", similarity="pixel", batch_size=2, check_every=2, window=2, max_steps=6, sampler_steps=2,
                 guidance_scales=[1.0, 3.0], threshold=-1.0, refine=True, refine_samples=8, refine_max_checks=1,
                 invert_prompt=False)
    outs = Inverter(adapter, cfg, PixelSimilarity(), batch_images=2).run(ts)
    check_steps = len(adapter.check_timesteps(2, "paper"))
    for o in outs:
        r = o.result
        assert r.success and r.steps == 2 and r.guidance_scale == 1.0  # every sample passes: the first scale
        (step, kl, copies, n, passes, masks), = r.refine["points"]
        assert (step, copies, n, passes, masks) == (2, 8, 8, 1.0, [0b11] * 8)
        assert r.refined_score == efs([(kl, passes)])[0] == pytest.approx(r.score)
        # 8 samples at scale 1 (one pass) and at scale 3 (conditional and unconditional pass)
        assert r.refine["calls"]["check_forward"] == 8 * check_steps * (1 + 2)
