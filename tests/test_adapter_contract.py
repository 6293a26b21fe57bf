"""The adapter contract (adapters/base.py), run over a tiny pipeline of every family: a new family gets
these tests by joining FAMILIES."""

import json

import pytest
import torch

from invmm.adapters.base import CAPABILITIES, NOISE_SCHEDULE, TEXT, ModelAdapter, NoiseScheduleAdapter
from invmm.adapters.loading import load_adapter
from invmm.scorers import SCORERS, ScorerError, build_scorer
from invmm.zoo.tiny import build_tiny_ldm, build_tiny_pixel, build_tiny_sd, build_tiny_sd3

FAMILIES = {
    "pixel": (build_tiny_pixel, {}),
    "pixel-rgb-v": (build_tiny_pixel, {"channels": 3, "prediction_type": "v_prediction"}),
    "latent-kl": (build_tiny_ldm, {"vae_kind": "kl"}),
    "latent-vq": (build_tiny_ldm, {"vae_kind": "vq"}),
    "sd": (build_tiny_sd, {}),
    "sd3": (build_tiny_sd3, {}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def adapter(request, tmp_path_factory):
    build, kwargs = FAMILIES[request.param]
    return load_adapter(str(build(tmp_path_factory.mktemp(request.param) / "m", **kwargs)))


def _images(adapter, n=2, seed=0):
    c = 1 if adapter.image_mode == "L" else 3
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, adapter.image_size, adapter.image_size, generator=g) * 2 - 1


def _cond(adapter, n):
    return adapter.prompt_embeddings(["a red square"] * n) if TEXT in adapter.capabilities else None


def test_declares_the_contract(adapter):
    assert isinstance(adapter, ModelAdapter)
    assert set(adapter.capabilities) <= set(CAPABILITIES)
    assert adapter.conditional == (TEXT in adapter.capabilities)
    assert adapter.image_mode in ("L", "RGB") and adapter.image_size == adapter.native_resolution
    d = adapter.describe()
    assert d["family"] == adapter.family and d["resolution"] == adapter.image_size
    json.dumps(d)  # recorded in run.json as it is


def test_encode_decode_shapes_and_range(adapter):
    x = _images(adapter)
    z = adapter.encode(x)
    assert z.shape == (2, *adapter.latent_shape)
    out = adapter.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    # A generator only ever changes a KL posterior draw; the same generator gives the same draw.
    a = adapter.encode(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, adapter.encode(x, generator=torch.Generator().manual_seed(1)))


def test_forward_process_and_x0_prediction(adapter):
    x0 = adapter.encode(_images(adapter))
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


def test_guided_output_is_classifier_free_guidance(adapter):
    x = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(3))
    t = adapter.sampler(2).timesteps[0].expand(2)
    with torch.no_grad():
        plain = adapter.guided_output(x, t)
        assert plain.shape == x.shape
        if TEXT not in adapter.capabilities:
            return
        cond = _cond(adapter, 2)
        u = adapter.guided_output(x, t, adapter.uncond_embeddings(2))
        c = adapter.guided_output(x, t, cond)
        torch.testing.assert_close(plain, u)  # no prompt: the empty prompt's output
        torch.testing.assert_close(adapter.guided_output(x, t, cond, 3.0), u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)


def test_generate_and_check_grid(adapter):
    noise = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(4))
    images = adapter.generate(noise, steps=2, cond=_cond(adapter, 2))
    assert images.shape == (2, 1 if adapter.image_mode == "L" else 3, adapter.image_size, adapter.image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert len(adapter.check_timesteps(2)) == 2


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorers_are_refused_exactly_when_a_capability_is_missing(adapter, name):
    missing = set(SCORERS[name].requires) - set(adapter.capabilities)
    spec = "invmm:sampler_steps=10" if name == "invmm" else name  # the tiny models have 100 timesteps
    if missing:
        with pytest.raises(ScorerError, match="needs"):
            build_scorer(spec, adapter)
    else:
        assert build_scorer(spec, adapter).adapter is adapter
