import math

import pytest
import torch

from invmm import measure, preset
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.sd3 import SD3Adapter


@pytest.fixture(scope="module")
def sd3_model(tiny_family):
    return tiny_family("sd3")


@pytest.fixture(scope="module")
def sd3(sd3_model):
    return load_adapter(str(sd3_model))


def test_detected_without_t5(sd3):
    assert isinstance(sd3, SD3Adapter) and sd3.family == "sd3"
    assert sd3.image_size == 16 and sd3.text_encoders[2] is None
    embeds, pooled = sd3.prompt_embeddings(["a cat"])
    assert embeds.shape == (1, 77 + 256, 32) and pooled.shape == (1, 32)
    assert embeds[:, 77:].abs().sum() == 0  # no T5: zeros, as the SD3 pipeline does


def test_forward_process_matches_scale_noise(sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    idx = torch.tensor([0, 500, 999])
    ref = torch.cat([sched.scale_noise(x0[i : i + 1], sched.timesteps[idx[i]][None], eps[i : i + 1])
                     for i in range(3)])
    torch.testing.assert_close(sd3.add_noise(x0, eps, idx), ref, rtol=1e-5, atol=1e-5)
    # Shifted sigmas: with shift 3 the middle index sits well above 0.5.
    assert sd3.sigmas[500].item() > 0.7


def test_x0_from_velocity(sd3):
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    idx = torch.tensor([100, 900])
    cond = sd3.prompt_embeddings(["a", "b"])
    with torch.no_grad():
        v = sd3.denoiser(hidden_states=x_t, encoder_hidden_states=cond[0], pooled_projections=cond[1],
                            timestep=sd3.timesteps[idx]).sample
        s = sd3.sigmas[idx].view(-1, 1, 1, 1)
        torch.testing.assert_close(sd3.predict_x0(x_t, idx, cond), x_t - s * v)


def test_soft_clip_l_tokens_reproduce_the_caption_states(sd3):
    ids = sd3._tokenize(0, ["a red apple"])
    one_hot = torch.nn.functional.one_hot(ids[:, 1:76], sd3.vocab_size).float()
    with torch.no_grad():
        soft_embeds, _ = sd3.soft_prompt_embeddings(one_hot, sd3.soft_prompt_context("a red apple"))
        ref_embeds, _ = sd3.prompt_embeddings(["a red apple"])
    torch.testing.assert_close(soft_embeds, ref_embeds, rtol=1e-5, atol=1e-5)


def test_soft_prompt_pools_clip_l_at_the_last_position(sd3):
    """A soft prompt is a full-length prompt: CLIP-L's pooled vector is read at position 76, where the end token
    sits, and so depends on every learned position (with the empty prompt's ids it was read at position 1)."""
    caption = " ".join(["memorized"] * 10)  # at least 75 tokens: the caption's end token is at position 76
    ids = sd3._tokenize(0, [caption])
    assert ids[0, -1] == sd3.tokenizers[0].eos_token_id and (ids[0, 1:-1] != ids[0, -1]).all()
    one_hot = torch.nn.functional.one_hot(ids[:, 1:76], sd3.vocab_size).float().requires_grad_(True)
    _, pooled = sd3.soft_prompt_embeddings(one_hot, sd3.soft_prompt_context(caption))
    _, ref = sd3.prompt_embeddings([caption])
    torch.testing.assert_close(pooled, ref, rtol=1e-5, atol=1e-5)  # CLIP-L's and CLIP-G's pooled, L's half soft
    width = sd3.text_encoders[0].config.projection_dim
    pooled[:, :width].sum().backward()
    assert (one_hot.grad.abs().sum(-1) > 0).all()  # every one of the 75 positions reaches CLIP-L's pooled vector


@pytest.mark.parametrize("caption", ["a purple square", None])
def test_inversion_end_to_end(sd3_model, tmp_path, caption):
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 20, 200)).save(tmp_path / "p.png")
    cfg = preset("sd3", similarity="pixel", max_steps=4, check_every=2, window=2, batch_size=2, sampler_steps=3,
                 guidance_scales=[1.0, 2.0])
    assert cfg.sampler == "euler" and cfg.guidance_scales == [1.0, 2.0]
    (r,) = measure(str(sd3_model), [ImageItem(id="p", path=str(tmp_path / "p.png"), caption=caption)], cfg,
                   out=tmp_path / "run")
    assert r.status == "ok" and r.steps in (2, 4) and len(r.similarities) == (8 if r.success else 1)
    assert r.prompt_mode == ("caption" if caption else "inverted")
    assert (r.success and r.guidance_scale in (1.0, 2.0)) or math.isinf(r.score)
