import math
import statistics

import pytest
import torch
from same_results import assert_same_checks, assert_same_result

from invmm.config import preset
from invmm.families import load_adapter
from invmm.functional import kl_to_standard_normal, seed_from
from invmm.inversion import Inverter, Target
from invmm.repeats import repeat_seed
from invmm.scorers import InvMMScorer, build_scorer
from invmm.similarity import PixelSimilarity


def targets(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Target(id=f"img-{i}", pixels=torch.rand(1, 8, 8, generator=g) * 2 - 1) for i in range(n)]


def small_config(**kw):
    base = dict(similarity="pixel", batch_size=4, check_every=5, window=5, max_steps=15, sampler_steps=5)
    base.update(kw)
    return preset("ddpm", **base)


@pytest.fixture(scope="module")
def adapter(tiny_model):
    return load_adapter(str(tiny_model))


def run(adapter, cfg, ts, k):
    outs = Inverter(adapter, cfg, PixelSimilarity(), batch_images=k).run(ts)
    return {o.result.id: o for o in outs}


def test_success_stops_at_the_first_check_and_scores_the_kl_then(adapter):
    outs = run(adapter, small_config(threshold=-1.0), targets(2), 2)  # every sample passes
    for o in outs.values():
        r = o.result
        assert r.success and r.steps == 5 and len(r.checks) == 1
        assert r.score == pytest.approx(float(kl_to_standard_normal(o.mu[None], o.logvar[None])[0]))
        assert r.score > 0  # five Adam steps at lr 0.1 moved away from N(0, I)
        assert len(r.similarities) == 8 and o.samples.shape == (8, 1, 8, 8)


def test_no_success_within_budget_scores_inf(adapter):
    outs = run(adapter, small_config(threshold=1.5), targets(2), 2)  # nothing can reach 1.5
    for o in outs.values():
        r = o.result
        assert not r.success and math.isinf(r.score) and r.steps == 15
        assert [c[0] for c in r.checks] == [5, 10, 15]
        assert r.kl is not None and math.isfinite(r.kl)


def test_images_succeed_at_different_checks_and_leave_the_batch(adapter):
    ts = targets(3)
    # The full check (no rounds) records every sample's similarity, so its minimum places the threshold.
    alone = {t.id: run(adapter, small_config(check_rounds=[]), [t], 1)[t.id].result for t in ts}
    # Threshold between the images' similarities at the first check: some succeed there, some later.
    first = sorted(r.checks[0][3] for r in alone.values())
    cfg = small_config(threshold=(first[0] + first[1]) / 2)
    together = run(adapter, cfg, ts, 2)  # 3 images through 2 slots: one waits for a slot to free up
    ref = {t.id: run(adapter, cfg, [t], 1)[t.id].result for t in ts}
    assert len({r.steps for r in ref.values()}) > 1, "the scenario needs images finishing at different steps"
    for i, r in ref.items():
        assert together[i].result.steps == r.steps
        assert together[i].result.success == r.success


def test_batch_invariance_and_determinism(adapter):
    cfg = small_config(max_steps=10, threshold=1.5)
    ts = targets(4)
    batched = run(adapter, cfg, ts, 4)
    again = run(adapter, cfg, ts, 4)
    for t in ts:
        alone = run(adapter, cfg, [t], 1)[t.id]
        torch.testing.assert_close(batched[t.id].mu, alone.mu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched[t.id].logvar, alone.logvar, rtol=1e-4, atol=1e-5)
        assert batched[t.id].result.kl == pytest.approx(alone.result.kl, rel=1e-4)
        # Same seed, same batch, same process: one deterministic computation, bit-identical (the suite's one exact
        # comparison of two runs: no batch shape or machine differs between them).
        assert torch.equal(batched[t.id].mu, again[t.id].mu)
        assert_same_result(batched[t.id].result, again[t.id].result)
    # The seed matters: another run seed gives other noise, hence another distribution.
    other = run(adapter, cfg.replace(seed=1), ts[:1], 1)[ts[0].id]
    assert not torch.allclose(other.mu, batched[ts[0].id].mu)


def test_divergence_is_reported_per_image(adapter):
    outs = run(adapter, small_config(lr=1e30), targets(2), 2)
    for o in outs.values():
        r = o.result
        assert r.status == "error" and r.error_kind == "numerical"
        assert "NaN" in r.error and "learning rate" in r.error


def test_scheduler_prediction_types_reach_the_adapter(tmp_path):
    from invmm.zoo.tiny import build_tiny_pixel

    for pt in ("v_prediction", "sample"):
        a = load_adapter(str(build_tiny_pixel(tmp_path / pt, prediction_type=pt)))
        assert a.prediction_type == pt
        x0 = torch.zeros(2, 1, 8, 8)
        t = torch.tensor([10, 90])
        x_t = a.add_noise(x0, torch.ones_like(x0), t)
        out = a.denoiser(x_t, t).sample
        abar = a.alphas_cumprod[t].view(-1, 1, 1, 1)
        expect = out if pt == "sample" else abar.sqrt() * x_t - (1 - abar).sqrt() * out
        torch.testing.assert_close(a.predict_x0(x_t, t), expect)


@pytest.mark.slow
def test_toy_model_reproduces_a_duplicated_digit_but_not_a_held_out_one(toy_model, tmp_path):
    from invmm.data.images import ImageItem, load_image
    from invmm.zoo.digits import export_images, load_manifest

    # digit-1742 has 64 copies in the training set; digit-1032 was held out.
    ids = ["digit-1742", "digit-1032"]
    manifest = load_manifest(toy_model)
    assert {e["id"]: e["copies"] for e in manifest["images"] if e["id"] in ids} == {"digit-1742": 64, "digit-1032": 0}
    ts = []
    for path in export_images(manifest, tmp_path, ids=ids):
        item = load_image(ImageItem(id=path.stem, path=str(path)), mode="L", size=8)
        ts.append(Target(id=item.id, pixels=item.pixels, path=item.path))
    cfg = preset("ddpm", similarity="pixel", max_steps=150, sampler_steps=50, map_samples=0)
    outs = run(load_adapter(str(toy_model)), cfg, ts, 2)
    dup, held = outs["digit-1742"].result, outs["digit-1032"].result
    assert dup.success and math.isfinite(dup.score) and dup.steps <= 150 and dup.min_similarity >= cfg.beta
    assert not held.success and math.isinf(held.score) and held.min_similarity < 0.9


def test_stochastic_checks_draw_each_images_noise_from_its_own_stream(adapter):
    cfg = small_config(max_steps=10, threshold=1.5, eta=1.0)
    ts = targets(3)
    batched = run(adapter, cfg, ts, 3)
    for t in ts:
        alone = run(adapter, cfg, [t], 1)[t.id]
        torch.testing.assert_close(batched[t.id].samples, alone.samples, rtol=1e-4, atol=1e-5)
    deterministic = run(adapter, cfg.replace(eta=0.0), ts[:1], 1)[ts[0].id]
    # Same mu/sigma and starting noise; only the sampler's added noise differs.
    torch.testing.assert_close(deterministic.mu, batched[ts[0].id].mu)
    assert not torch.allclose(deterministic.samples, batched[ts[0].id].samples, atol=1e-3)


def test_eta_is_validated():
    with pytest.raises(ValueError, match="eta"):
        small_config(eta=1.5)
    with pytest.raises(ValueError, match="Euler sampler is deterministic"):
        preset("sd3", eta=1.0)


# --- repeats: independent streams per image (invmm.repeats) ---

def images(n):
    return [t.pixels for t in targets(n, seed=3)]


def invert(adapter, cfg, ts, k):
    outs = Inverter(adapter, cfg, PixelSimilarity(), batch_images=k).run(ts)
    return {(o.result.id, o.result.repeat): o for o in outs}


def test_repeat_zero_is_the_single_run_stream_and_repeats_differ():
    assert repeat_seed(7, "x.png", 0) == seed_from(7, "x.png")
    seeds = {repeat_seed(7, "x.png", r) for r in range(5)} | {repeat_seed(7, "y.png", r) for r in range(5)}
    assert len(seeds) == 10


def test_a_repeat_is_batch_invariant_and_deterministic(adapter):
    cfg = small_config(threshold=1.5)
    px = images(2)
    rows = [Target(id=f"img-{i}", pixels=px[i], repeat=r) for i in range(2) for r in range(3)]
    together = invert(adapter, cfg, rows, 6)
    alone = invert(adapter, cfg, [Target(id="img-1", pixels=px[1], repeat=2)], 1)[("img-1", 2)]
    torch.testing.assert_close(together[("img-1", 2)].mu, alone.mu, rtol=1e-4, atol=1e-5)
    assert together[("img-1", 2)].result.kl == pytest.approx(alone.result.kl, rel=1e-4)
    again = invert(adapter, cfg, rows, 6)
    assert all(torch.equal(again[k].mu, together[k].mu) for k in together)  # the same computation: bit-identical
    # Independent streams: the repeats of one image end in different places.
    assert not torch.allclose(together[("img-1", 0)].mu, together[("img-1", 1)].mu)
    assert together[("img-1", 0)].result.image_seed == seed_from(cfg.seed, "img-1")


def test_a_smaller_budget_is_the_larger_run_cut_there(adapter):
    """What benchmarks/budget_sensitivity.py relies on: no schedule depends on max_steps."""
    px = images(2)
    for threshold in (1.5, -1.0):  # never / always reproduced
        ts = [Target(id=f"img-{i}", pixels=px[i]) for i in range(2)]
        long = invert(adapter, small_config(threshold=threshold, max_steps=25), ts, 2)
        short = invert(adapter, small_config(threshold=threshold, max_steps=10), ts, 2)
        for key, s in short.items():
            r_long, r = long[key].result, s.result
            if r_long.success and r_long.steps <= 10:
                assert_same_result(r, r_long)
            else:
                assert math.isinf(r.score) and r.steps == 10
                assert_same_checks(r.checks, r_long.checks[: len(r.checks)])


def test_the_invmm_scorer_scores_the_median_of_its_repeats(adapter):
    scorer = InvMMScorer(adapter, config=small_config(threshold=-1.0), batch_images=6, repeats=3)
    scores = scorer.score(torch.stack(images(2)), ["a", "b"])
    for image_id, score in zip(["a", "b"], scores):
        reps = [r["score"] for r in scorer.results[image_id].repeats]
        assert len(set(reps)) == 3 and score == statistics.median(reps)
    assert build_scorer("invmm:repeats=2,max_steps=10,sampler_steps=5", adapter).repeats == 2
    assert scorer.settings()["repeats"] == 3
