"""The refined score (inversion/refine.py): its math against independent references, and that it leaves the
paper's score exactly as it was."""

import math

import numpy as np
import pytest
import torch
from same_results import assert_close_tensors, assert_same_result, assert_same_runs, close
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


def test_expected_first_success_matches_a_simulated_first_passage_given_a_success():
    points = [(0.1, 0.05), (0.2, 0.3), (0.25, 0.6), (0.4, 0.2)]
    rng = np.random.default_rng(1)
    draws, none = [], 0
    for _ in range(50000):
        for kl, p in points:
            if rng.random() < p:
                draws.append(kl)
                break
        else:
            none += 1  # no check passed: past the budget this is the paper's inf, on no KL
    mean, sd, chance = expected_first_success(points)
    assert mean == pytest.approx(np.mean(draws), abs=0.002)
    assert sd == pytest.approx(np.std(draws), abs=0.002)
    assert chance == pytest.approx(1 - 0.95 * 0.7 * 0.4 * 0.8) and 1 - chance == pytest.approx(none / 50000, abs=0.005)
    assert expected_first_success([(0.3, 1.0), (0.9, 1.0)]) == (0.3, 0.0, 1.0)
    assert expected_first_success([(0.3, 0.5)]) == (0.3, 0.0, 0.5)  # the chance left is not put on the KL
    nan_mean, nan_sd, zero = expected_first_success([(0.3, 0.0), (0.5, 0.0)])
    assert math.isnan(nan_mean) and math.isnan(nan_sd) and zero == 0.0


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


def test_the_refinement_leaves_the_paper_score_as_it_was(paired):
    plain, refined = paired
    for i, p in plain.items():
        a, b = p.result, refined[i].result
        assert_same_result(a, b, refined=False)
        assert_close_tensors(p.mu, refined[i].mu)
        assert_close_tensors(p.samples, refined[i].samples)
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
        assert_same_result(o.result, again[i].result)
        a = alone[i].result
        assert (o.result.success, o.result.steps) == (a.success, a.steps)
        if a.success:  # batch shapes change float rounding only (KL within 1e-4 relative)
            assert close(o.result.refined_score, a.refined_score)


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


@pytest.mark.slow
def test_an_audit_with_the_refinement_resumes_exports_reports_and_compares(tmp_path, toy_model, toy_images):
    from typer.testing import CliRunner

    from invmm.cli import app
    from invmm.store.files import Ledger

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
        assert_same_result(after[key(r)], r)
    # Resuming without the refinement is another setting: refused, nothing written.
    res = _audit(toy_model, data, part)
    assert res.exit_code != 0 and "refine" in res.output
    assert len(Ledger(part).read()) == 3

    res = runner.invoke(app, ["export", str(full)])
    assert res.exit_code == 0, res.output
    header, *rows = (full / "results.csv").read_text().splitlines()
    assert "refined_score" in header.split(",")
    res = runner.invoke(app, ["report", str(full), "--by", "refined"])
    assert res.exit_code == 0, res.output
    assert "Every score in this report is the refined score" in (full / "report" / "index.html").read_text()
    res = runner.invoke(app, ["report", str(full), "--rank-by", "refined"])  # the old spelling, for one release
    assert res.exit_code == 0 and "--rank-by is deprecated" in res.output and "use --by" in res.output
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
    res = runner.invoke(app, ["report", str(plain), "--by", "refined"])
    assert res.exit_code != 0 and "without the refinement" in res.output
    res = runner.invoke(app, ["report", str(plain), "--by", "best"])
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
        assert close(s, alone[t.id].result.refined_score)
        assert scorer.pop_details(t.id)["refined_score"] == (s if math.isfinite(s) else None)  # the same number
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


def test_no_check_after_the_budget_enters_the_refined_score_and_the_chance_left_is_reported(adapter, paired,
                                                                                               threshold):
    """Fails before the fix: the continuation ran past --max-steps and the chance that no check passed was put on
    the last KL."""
    _, refined = paired
    reproduced = [o for o in refined.values() if o.result.success]
    for o in reproduced:
        r = o.result
        steps = [p[0] for p in r.refine["points"]]
        assert max(steps) <= 40 and r.steps + r.refine["extra_steps"] <= 40
        chances = [p[4] for p in r.refine["points"]]
        survive = float(np.prod([1 - c for c in chances]))
        weights = [c * float(np.prod([1 - x for x in chances[:i]])) for i, c in enumerate(chances)]
        assert r.refined_success == pytest.approx(1 - survive, abs=1e-6)
        assert r.refine["leftover"] == pytest.approx(survive, abs=1e-6)
        if sum(weights) > 0:
            kls = [p[1] for p in r.refine["points"]]
            assert r.refined_score == pytest.approx(sum(w * k for w, k in zip(weights, kls)) / sum(weights))
    # A success at the budget's last check: the same image with the budget at its success step (the budget changes
    # no schedule, so the path up to it is the same) has no continuation at all.
    o = reproduced[0]
    (t,) = [t for t in targets(4) if t.id == o.result.id]
    cut = run(adapter, small_config(threshold=threshold, refine=True, max_steps=o.result.steps), [t], 1)[t.id].result
    assert (cut.success, cut.steps) == (True, o.result.steps) and close(cut.score, o.result.score)
    assert cut.refine["extra_steps"] == 0 and cut.refine["ended"] == "budget"
    assert max(p[0] for p in cut.refine["points"]) == o.result.steps
    assert 0 < cut.refined_success <= 1 and cut.refine["leftover"] == pytest.approx(1 - cut.refined_success, abs=1e-6)


class SpySimilarity(PixelSimilarity):
    """Pixel similarity that records, per call, how many samples it judged and whether it was given a mask."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, images, target, mask=None):
        self.calls.append((len(images), mask is not None))
        return super().__call__(images, target, mask=mask)


def test_the_refinement_judges_a_sample_as_the_check_does_under_a_mask(tmp_path):
    """Fails before the fix: the refinement compared whole images, so under a mask almost no fresh sample was a
    copy and the refined score fell onto the last continued check's KL. A masked --refine inversion of a template
    image of the template toy, its planted mask read as `audit` reads a manifest's, through a spy similarity."""
    from invmm.data.datasets import load_dataset
    from invmm.data.images import load_image
    from invmm.data.masks import load_item_mask
    from invmm.zoo import shipped_digits_template_model
    from invmm.zoo.digits import load_manifest
    from invmm.zoo.digits_template import export_template_images, template_groups

    model = shipped_digits_template_model()
    manifest = load_manifest(model)
    member = next(e for e in template_groups(manifest, 1) if e["id"].startswith("template3"))
    (item,) = load_dataset(export_template_images(manifest, tmp_path / "d", ids=[member["id"]]))
    adapter = load_adapter(str(model))
    load_image(item, mode=adapter.image_mode, size=adapter.image_size)
    mask, info = load_item_mask(item, adapter.image_size)
    spy = SpySimilarity()
    cfg = preset("ddpm", similarity="pixel", max_steps=100, sampler_steps=10, refine=True, refine_samples=16,
                 map_samples=0)
    (o,) = Inverter(adapter, cfg, spy, batch_images=1).run([Target(id=item.id, pixels=item.pixels, mask=mask,
                                                                   mask_info=info)])
    r = o.result
    assert r.success and r.mask["fraction"] == 0.25, "the scenario needs a masked success"
    # Every similarity the inversion computes, the refinement's estimates (16 samples each) included, is over the mask.
    assert spy.calls and all(masked for _, masked in spy.calls) and any(n == 16 for n, _ in spy.calls)
    pts = r.refine["points"]
    assert next(p for p in pts if p[0] == r.steps)[4] > 0  # fresh samples of the passing distribution are copies
    live = [p[1] for p in pts if p[4] > 0]
    assert min(live) - 1e-9 <= r.refined_score <= max(live) + 1e-9 and r.refined_success > 0


def test_in_batches_the_refinement_changes_the_paper_scores_by_float_noise_only(adapter, threshold):
    """A refining image keeps its batch slot, so other images share batches with other mates than without the
    refinement: decisions and steps stay identical, scores and similarities move within the batching tolerance."""
    ts = targets(8, seed=3)
    plain = run(adapter, small_config(threshold=threshold), ts, 4)
    refined = run(adapter, small_config(threshold=threshold, refine=True), ts, 4)
    # images finish at different steps, so a refining one shares batches with images still on their paper path
    assert sum(o.result.success for o in plain.values()) >= 2 and len({o.result.steps for o in plain.values()}) > 1
    assert_same_runs([o.result for o in plain.values()], [o.result for o in refined.values()], refined=False)
