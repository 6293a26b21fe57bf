import math

import pytest
import torch

from invmm import measure, preset
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.sd import SDAdapter
from invmm.functional import gumbel_noise, gumbel_softmax_sample
from invmm.records import ImageSummary


@pytest.fixture(scope="module")
def sd_model(tiny_family):
    return tiny_family("sd")


@pytest.fixture(scope="module")
def sd(sd_model):
    return load_adapter(str(sd_model))


def test_detected_as_text_to_image(sd):
    assert isinstance(sd, SDAdapter) and sd.family == "sd"
    assert (sd.image_size, sd.max_length, sd.n_soft_tokens, sd.vocab_size) == (16, 77, 75, 514)


def test_one_hot_soft_prompt_equals_the_tokenized_caption(sd):
    ids = sd.tokenize(["a handwritten seven"])
    one_hot = torch.nn.functional.one_hot(ids[:, 1:76], sd.vocab_size).float()
    with torch.no_grad():
        soft = sd.soft_prompt_embeddings(one_hot)
    torch.testing.assert_close(soft, sd.prompt_embeddings(["a handwritten seven"]), rtol=1e-5, atol=1e-5)
    # A different mixture gives different embeddings, and gradients reach the token distribution.
    probs = torch.full((1, 75, sd.vocab_size), 1.0 / sd.vocab_size, requires_grad=True)
    sd.soft_prompt_embeddings(probs).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_gumbel_softmax_matches_torch_with_the_same_stream():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    ref = torch.nn.functional.gumbel_softmax(logits, tau=2.0, hard=False)
    ours = gumbel_softmax_sample(logits, gumbel_noise(logits.shape, torch.Generator().manual_seed(7)), 2.0)
    torch.testing.assert_close(ours, ref)


def test_classifier_free_guidance_combines_two_calls(sd):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 50])
    cond = sd.prompt_embeddings(["a seven", "a two"])
    with torch.no_grad():
        u = sd.guided_output(x, t, sd.uncond_embeddings(2))
        c = sd.guided_output(x, t, cond)
        torch.testing.assert_close(sd.guided_output(x, t, cond, 3.0), u + 3.0 * (c - u), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["caption", "inverted"])
def test_inversion_end_to_end(sd_model, tmp_path, mode):
    from PIL import Image

    Image.new("RGB", (16, 16), (20, 120, 200)).save(tmp_path / "blue.png")
    cfg = preset("sd", similarity="pixel", max_steps=4, check_every=2, window=2, batch_size=2, sampler_steps=3,
                 guidance_scales=[1.0, 3.0])
    item = ImageItem(id="blue", path=str(tmp_path / "blue.png"), caption="a blue square" if mode == "caption" else None)
    (r,) = measure(str(sd_model), [item], cfg, out=tmp_path / "run")
    assert r.status == "ok" and r.prompt_mode == mode and r.steps in (2, 4)
    assert [c[0] for c in r.checks][:1] == [2] and len(r.similarities) == (8 if r.success else 1)
    if mode == "caption":
        assert r.prompt == "a blue square" and r.caption == "a blue square"
    else:
        assert isinstance(r.prompt, str) and r.caption is None
    assert (r.success and r.guidance_scale in (1.0, 3.0)) or (math.isinf(r.score) and r.guidance_scale is None)


def test_threshold_everything_passes_at_the_first_scale(sd_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "red.png")
    cfg = preset("sd", similarity="pixel", threshold=-1.0, max_steps=4, check_every=2, batch_size=2,
                 sampler_steps=2, guidance_scales=[2.0, 5.0])
    (r,) = measure(str(sd_model), [ImageItem(id="red", path=str(tmp_path / "red.png"))], cfg)
    assert r.success and r.steps == 2 and r.guidance_scale == 2.0 and r.prompt_mode == "inverted"


def test_cli_known_caption(sd_model, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from invmm.cli import app

    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "green.png")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["measure", str(sd_model), str(tmp_path / "green.png"), "--prompt", "a green square",
                                   "--out", str(out), "--max-steps", "2", "--check-every", "2", "--batch-size", "2",
                                   "--sampler-steps", "2", "--similarity", "pixel"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["prompt_mode"] == "caption" and rec["prompt"] == "a green square"
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "sd" and run["config"]["preset"] == "sd"


def test_memory_options_keep_the_numbers(sd_model, tmp_path):
    from PIL import Image


    Image.new("RGB", (16, 16), (90, 90, 10)).save(tmp_path / "y.png")
    item = ImageItem(id="y", path=str(tmp_path / "y.png"), caption="a yellow square")
    base = dict(similarity="pixel", max_steps=2, check_every=2, window=2, batch_size=2, sampler_steps=2,
                guidance_scales=[1.0, 2.0])
    (plain,) = measure(str(sd_model), [item], preset("sd", **base))
    (saving,) = measure(str(sd_model), [item], preset("sd", gradient_checkpointing=True, attention_slicing=True,
                                                       **base))
    # Checkpointing recomputes the same activations; slicing splits the same attention: same numbers.
    assert saving.kl == pytest.approx(plain.kl, rel=1e-5) and saving.steps == plain.steps
    (bf16,) = measure(str(sd_model), [item], preset("sd", precision="bf16", **base))
    assert bf16.status == "ok" and math.isfinite(bf16.kl) and isinstance(bf16, ImageSummary)
    with pytest.raises(ValueError, match="precision"):
        preset("sd", precision="fp8")
