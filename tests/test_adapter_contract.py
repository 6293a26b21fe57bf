"""The adapter contract (adapters/base.py), run over a tiny pipeline of every family: a new family gets
these tests by joining tests/families.py's FAMILIES (test_matrix.py runs every scorer on them)."""

import json

import pytest
import torch
from families import FAMILIES, given, images
from same_results import assert_same_similarities, close

from invmm.config import default_config
from invmm.families import load_adapter
from invmm.families.base import CAPABILITIES, CLASS, NOISE_SCHEDULE, TEXT, ModelAdapter
from invmm.families.conditions import cond_rows
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.inversion import Inverter, Target
from invmm.inversion.cost import RowCounter, text_encoders, vae_encoder
from invmm.similarity import PixelSimilarity


@pytest.fixture(scope="module", params=list(FAMILIES))
def adapter(request, tiny_family):
    return load_adapter(str(tiny_family(request.param)))


def _cond(adapter, n):
    return adapter.prompt_embeddings([given(adapter, i) for i in range(n)]) if adapter.conditional else None


def test_declares_the_contract(adapter):
    assert isinstance(adapter, ModelAdapter)
    assert set(adapter.capabilities) <= set(CAPABILITIES)
    assert adapter.conditional == bool({TEXT, CLASS} & adapter.capabilities)
    assert adapter.image_mode in ("L", "RGB") and adapter.image_size == adapter.native_resolution
    d = adapter.describe()
    assert d["family"] == adapter.family and d["resolution"] == adapter.image_size
    json.dumps(d)  # recorded in run.json as it is


def test_encode_decode_shapes_and_range(adapter):
    x = images(adapter)
    z = adapter.encode(x)
    assert z.shape == (2, *adapter.latent_shape)
    out = adapter.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    # A generator only ever changes a KL posterior draw; the same generator gives the same draw.
    a = adapter.encode(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, adapter.encode(x, generator=torch.Generator().manual_seed(1)))


def test_forward_process_and_x0_prediction(adapter):
    x0 = adapter.encode(images(adapter))
    g = torch.Generator().manual_seed(0)
    t = adapter.sample_timesteps(2, g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = adapter.add_noise(x0, eps, t)
    assert x_t.shape == x0.shape and not torch.allclose(x_t, x0)
    with torch.no_grad():
        assert adapter.predict_x0(x_t, t, _cond(adapter, 2)).shape == x0.shape


def test_noise_schedule_capability(adapter):
    if NOISE_SCHEDULE not in adapter.capabilities:
        assert not isinstance(adapter, NoiseScheduleAdapter)
        return
    assert isinstance(adapter, NoiseScheduleAdapter)
    abar = adapter.alpha_bar(torch.arange(adapter.num_train_timesteps))
    assert (abar > 0).all() and (abar <= 1).all() and (abar.diff() < 0).all()
    x_t = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, adapter.num_train_timesteps // 2])
    with torch.no_grad():
        x0_hat, eps_hat = adapter.predict_x0(x_t, t), adapter.eps_prediction(x_t, t)
    a = abar[t].view(-1, 1, 1, 1)
    # eps and x0 estimates are two views of one prediction: x_t = sqrt(abar) x0_hat + sqrt(1 - abar) eps_hat.
    torch.testing.assert_close(a.sqrt() * x0_hat + (1 - a).sqrt() * eps_hat, x_t, rtol=1e-4, atol=1e-4)


def test_guided_output_follows_the_guidance_kind(adapter):
    """"cfg": u + s (c - u). "embedded" (Flux dev): the scale is a model input, one forward per sample, and
    it changes the output. "none" (Flux schnell): the scale is ignored. Per-row scales: each row as if alone."""
    x = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(3))
    t = adapter.sampler(2).timesteps[0].expand(2)
    with torch.no_grad():
        plain = adapter.guided_output(x, t)
        assert plain.shape == x.shape
        if not adapter.conditional:
            return
        kind = getattr(adapter, "guidance_kind", "cfg")
        assert kind in ("cfg", "embedded", "none")
        cond = _cond(adapter, 2)
        u = adapter.guided_output(x, t, adapter.uncond_embeddings(2))
        c = adapter.guided_output(x, t, cond)
        torch.testing.assert_close(plain, u)  # no prompt: the empty prompt's output
        counter = RowCounter([adapter.denoiser])
        with counter.attached():
            guided = adapter.guided_output(x, t, cond, 3.0)
        if kind == "cfg":  # classifier-free guidance against the empty prompt
            torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)
        else:  # the scale is a model input (Flux dev) or there is none (Flux schnell): no unconditional pass
            assert counter.rows == len(x)
            if kind == "embedded":
                assert not torch.allclose(guided, c)
            else:
                torch.testing.assert_close(guided, c)
        # One scale per row (the success check batches images at different scales): row i as if alone.
        x4, t4, cond4 = torch.cat([x, x]), torch.cat([t, t]), _cond(adapter, 4)
        rows = adapter.guided_output(x4, t4, cond4, [1.0, 3.0, 3.0, 5.0])
        for i, scale in enumerate([1.0, 3.0, 3.0, 5.0]):
            alone = adapter.guided_output(x4[i : i + 1], t4[i : i + 1], cond_rows(cond4, slice(i, i + 1)), scale)
            torch.testing.assert_close(rows[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_generate_and_check_grid(adapter):
    noise = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(4))
    images = adapter.generate(noise, steps=2, cond=_cond(adapter, 2))
    assert images.shape == (2, 1 if adapter.image_mode == "L" else 3, adapter.image_size, adapter.image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert len(adapter.check_timesteps(2)) == 2


def _small_config(adapter, **kw):
    base = dict(similarity="pixel", batch_size=2, check_every=3, window=3, max_steps=9, sampler_steps=3,
                n_check_samples=4, check_rounds=[1, 2], map_samples=0)  # the map: in the exact-count test
    if adapter.conditional:
        base["guidance_scales"] = [1.0, 2.0, 4.0]
    return default_config(adapter, **{**base, **kw})


def _invert(adapter, cfg):
    """Image 0 with its known conditioning, image 1 with the conditioning inverted."""
    x = images(adapter)
    known = [given(adapter), None]
    ts = [Target(id=f"img-{i}", pixels=x[i], caption=known[i] if TEXT in adapter.capabilities else None,
                 class_label=known[i] if CLASS in adapter.capabilities else None) for i in range(2)]
    return [o.result for o in Inverter(adapter, cfg, PixelSimilarity(), batch_images=2).run(ts)]


@pytest.mark.parametrize("preview", [0, 2])
def test_model_calls_are_counted_exactly(adapter, preview):
    """Each result's calls against hooks on the model's own modules (the counts are machine independent)."""
    # Nothing passes: every check runs round 1 at every scale, or, with a preview, only the preview.
    cfg = _small_config(adapter, threshold=1.5, check_preview_steps=preview, map_samples=4)
    counters = {"denoiser": RowCounter([adapter.denoiser]), "text": RowCounter(text_encoders(adapter)),
                "encoder": RowCounter([vae_encoder(adapter)]),
                "decoder": RowCounter([getattr(getattr(adapter, "vae", None), "decoder", None)])}
    with counters["denoiser"].attached(), counters["text"].attached(), counters["encoder"].attached(), \
            counters["decoder"].attached():
        results = _invert(adapter, cfg)
    total = {k: sum(r.calls.get(k, 0) for r in results) for k in results[0].calls}
    assert counters["denoiser"].rows == total["opt_forward"] + total["check_forward"] + total["map_forward"]
    assert counters["text"].rows == total["text_encoder"]
    assert counters["encoder"].rows == total["vae_encode"]
    assert counters["decoder"].rows == total["vae_decode"]
    steps = len(adapter.check_timesteps(preview or 3, cfg.check_schedule))
    # Classifier-free guidance adds an unconditional pass at a scale other than 1; a model that takes the scale
    # as an input (Flux dev) or has no guidance (Flux schnell) runs once per sample at any scale.
    cfg_guided = adapter.conditional and getattr(adapter, "guidance_kind", "cfg") == "cfg"
    per_scale = [2 if cfg_guided and s != 1.0 else 1 for s in cfg.guidance_scales[: 3 if adapter.conditional else 1]]
    for r in results:
        assert r.calls["opt_forward"] == r.calls["opt_backward"] == 9 * 2
        # 3 checks, one sample per scale (round 1 fails), each scale's forwards per sampler step.
        assert r.calls["check_forward"] == 3 * steps * sum(per_scale)
        assert r.calls["similarity"] == 3 * len(per_scale)
        assert r.check_skips == ({"preview": 3} if preview else {})
        # The memorization map at the last check: n prior samples and the n - 1 its one decided sample lacks,
        # with the full sampler at the decided scale.
        full = len(adapter.check_timesteps(3, cfg.check_schedule))
        n = cfg.n_check_samples
        assert r.calls["map_forward"] in {(2 * n - 1) * full * f for f in per_scale}


def test_check_rounds_keep_every_decision(adapter):
    """Rounds stop a failing (image, scale) early; the decision and the score are those of the full check."""
    probe = _invert(adapter, _small_config(adapter, threshold=1.5, check_rounds=[]))
    # A threshold that some checks pass and others do not: just under the best worst-sample similarity seen.
    best = sorted(c[3] for r in probe for c in r.checks)
    threshold = (best[-1] + best[-2]) / 2 if best[-1] > best[-2] + 1e-4 else best[-1] - 1e-4
    full = _invert(adapter, _small_config(adapter, threshold=threshold, check_rounds=[]))
    rounds = _invert(adapter, _small_config(adapter, threshold=threshold))
    assert any(r.success for r in full)
    for a, b in zip(full, rounds):
        # A round puts a sample's row into a batch of another shape, where CPU kernels can differ in the last
        # digits: decisions identical, scores and similarities within the batching tolerance (same_results).
        assert (a.success, a.steps, a.guidance_scale) == (b.success, b.steps, b.guidance_scale) and close(a.score,
                                                                                                         b.score)
        if a.success:  # (a failed check before it saw fewer samples with rounds: its worst one differs)
            assert_same_similarities(a.similarities, b.similarities)
        # A failed check's similarity is over the samples generated before it was decided: never below the full one.
        assert all(cb[3] >= ca[3] - 1e-6 for ca, cb in zip(a.checks, b.checks))
        if not a.success:  # a success check can cost more: its first round also ran the higher scales
            assert b.calls["check_forward"] <= a.calls["check_forward"]


@pytest.mark.slow
def test_check_shortcuts_change_only_when_a_success_is_seen(adapter):
    """The opt-in preview and reconstruction-loss skip decide some checks without the full sampler. The fit
    is the exact run's (the skipped checks' draws are still taken), so a shortcut can only see a success
    later than the exact check, never earlier, and never one the exact check does not see."""
    probe = _invert(adapter, _small_config(adapter, threshold=1.5, check_rounds=[]))
    best = sorted(c[3] for r in probe for c in r.checks)
    threshold = (best[-1] + best[-2]) / 2 if best[-1] > best[-2] + 1e-4 else best[-1] - 1e-4
    def by_id(cfg):  # results come in the order images finish
        return sorted(_invert(adapter, cfg), key=lambda r: r.id)

    exact = by_id(_small_config(adapter, threshold=threshold))
    assert any(r.success for r in exact)
    recs = sorted(c[4] for r in probe for c in r.checks)
    runs = {"preview": by_id(_small_config(adapter, threshold=threshold, check_preview_steps=1)),
            "rec": by_id(_small_config(adapter, threshold=threshold, check_skip_rec=recs[len(recs) // 2])),
            # A margin no similarity can miss: the preview never drops a scale, and every decision is exact.
            "preview, wide margin": by_id(_small_config(adapter, threshold=threshold, check_preview_steps=1,
                                                        check_preview_margin=10.0))}
    assert sum(r.check_skips.get("rec", 0) for r in runs["rec"]) > 0
    for name, results in runs.items():
        for a, b in zip(exact, results):
            if not a.success:
                # The same fit to the last step (up to batch mates: an image that goes on shares the batch).
                assert not b.success and b.kl == pytest.approx(a.kl, rel=1e-4), name
            elif b.success:
                assert b.steps >= a.steps, name
                if b.steps == a.steps:  # the same fit, up to batch mates (an image that went on shares the batch)
                    assert b.score == pytest.approx(a.score, rel=1e-4), name
    for a, b in zip(exact, runs["preview, wide margin"]):
        assert (a.success, a.steps, a.guidance_scale) == (b.success, b.steps, b.guidance_scale) and close(a.score,
                                                                                                         b.score)
        assert b.calls["check_forward"] > a.calls["check_forward"] and not b.check_skips


def test_memory_options_run_on_every_family(adapter):
    """--precision bf16 (CPU autocast), gradient checkpointing and attention slicing on a fresh copy of the model:
    every family's denoiser takes them and the inversion runs."""
    fresh = load_adapter(adapter.describe()["source"])
    cfg = _small_config(fresh, max_steps=2, check_every=2, precision="bf16", gradient_checkpointing=True,
                        attention_slicing=True)
    results = _invert(fresh, cfg)
    assert all(r.status == "ok" and r.steps == 2 for r in results)
    assert fresh.denoiser.is_gradient_checkpointing
