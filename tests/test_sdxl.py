"""SDXL against diffusers' own StableDiffusionXLPipeline and schedulers, on the tiny pipeline."""

import json
import shutil

import pytest
import torch

from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.families.noise_schedule import DDIM_GRIDS
from invmm.families.sdxl import SDXLAdapter, crop_top_left
from invmm.functional import reparameterize
from invmm.inversion.conditioning import SoftPrompt
from invmm.zoo.tiny import build_tiny_sdxl

CAPTIONS = ["a red apple", "two cats on a mat"]


@pytest.fixture(scope="module")
def sdxl_model(tiny_family):
    return tiny_family("sdxl")


@pytest.fixture(scope="module")
def sdxl(sdxl_model):
    return load_adapter(str(sdxl_model))


@pytest.fixture(scope="module")
def pipe(sdxl_model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_model, local_files_only=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _long_caption(adapter):
    """A caption of at least 75 tokens: tokenized, it fills every position (start, 75 tokens, end)."""
    caption = " ".join(["memorized"] * 10)
    ids = adapter._tokenize(0, [caption])
    assert ids[0, -1] == adapter.tokenizers[0].eos_token_id and (ids[0, 1:-1] != ids[0, -1]).all()
    torch.testing.assert_close(ids, adapter._tokenize(1, [caption]), rtol=0, atol=0)
    return caption, ids


# 1. detection
def test_detected_as_sdxl(sdxl, sdxl_model):
    assert isinstance(sdxl, SDXLAdapter) and sdxl.family == "sdxl"
    assert (sdxl.image_size, sdxl.latent_shape, sdxl.n_soft_tokens, sdxl.vocab_size) == (16, (4, 8, 8), 75, 514)
    assert sdxl.inverted_encoders == (0, 1) and sdxl.tokenizers[1].pad_token == "!"
    assert [type(e).__name__ for e in sdxl.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    d = sdxl.describe()
    assert d["family"] == "sdxl" and d["force_zeros_for_empty_prompt"] is True and d["scaling_factor"] == 0.13025
    json.dumps(d)


def test_refiner_and_broken_folders_are_refused(sdxl_model, tmp_path):
    refiner = tmp_path / "refiner"
    shutil.copytree(sdxl_model, refiner, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    with pytest.raises(InvMMInputError, match="refiner"):
        load_adapter(str(refiner))
    # A second encoder whose projection does not feed the UNet's added embedding.
    bad = tmp_path / "bad"
    shutil.copytree(sdxl_model, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["addition_time_embed_dim"] = 4
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvMMInputError):
        load_adapter(str(bad))


# 2. x0 and the forward process against the schedulers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_and_add_noise_match_the_scheduler(sdxl, tmp_path, prediction_type):
    from diffusers import DDIMScheduler, DDPMScheduler

    adapter = sdxl if prediction_type == "epsilon" else load_adapter(
        str(build_tiny_sdxl(tmp_path / "v", prediction_type=prediction_type)))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 41, 99])
    ddpm = DDPMScheduler.from_config(adapter.scheduler_config)
    torch.testing.assert_close(adapter.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t))
    cond = adapter.prompt_embeddings(CAPTIONS + ["x"], original_size=(30, 20))
    ddim = DDIMScheduler.from_config(adapter.scheduler_config)
    ddim.set_timesteps(10)
    with torch.no_grad():
        out = adapter.denoiser(x0, t, encoder_hidden_states=cond[0],
                           added_cond_kwargs={"text_embeds": cond[1], "time_ids": cond[2]}).sample
        ref = torch.cat([ddim.step(out[i : i + 1], t[i], x0[i : i + 1]).pred_original_sample for i in range(3)])
        torch.testing.assert_close(adapter.predict_x0(x0, t, cond), ref, rtol=1e-5, atol=1e-5)


# 3. conditioning against the pipeline's encode_prompt and _get_add_time_ids
def test_conditioning_equals_the_pipeline(sdxl, pipe):
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(CAPTIONS, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=True)
    ours = sdxl.prompt_embeddings(CAPTIONS, original_size=(48, 24))
    torch.testing.assert_close(ours[0], embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours[1], pooled, rtol=0, atol=0)
    u_embeds, u_pooled, u_ids = sdxl.uncond_embeddings(2)
    assert neg.abs().sum() == 0 and neg_pooled.abs().sum() == 0  # force_zeros_for_empty_prompt
    torch.testing.assert_close(u_embeds, neg, rtol=0, atol=0)
    torch.testing.assert_close(u_pooled, neg_pooled, rtol=0, atol=0)
    # (width, height) as images.py records it; the pipeline takes (height, width).
    ids = pipe._get_add_time_ids((24, 48), (0, 8), (16, 16), dtype=torch.float32, text_encoder_projection_dim=20)
    torch.testing.assert_close(ours[2], ids.expand(2, 6), rtol=0, atol=0)
    default = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), dtype=torch.float32, text_encoder_projection_dim=20)
    torch.testing.assert_close(u_ids, default.expand(2, 6), rtol=0, atol=0)
    torch.testing.assert_close(sdxl.prompt_embeddings(["a"])[2], default, rtol=0, atol=0)


def test_empty_prompt_is_encoded_without_force_zeros(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder = build_tiny_sdxl(tmp_path / "m", force_zeros_for_empty_prompt=False)
    adapter = load_adapter(str(folder))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True, add_watermarker=False)
    _, neg, _, neg_pooled = pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=True)
    u_embeds, u_pooled, _ = adapter.uncond_embeddings(1)
    assert not adapter.force_zeros_for_empty_prompt and neg.abs().sum() > 0
    torch.testing.assert_close(u_embeds, neg, rtol=0, atol=0)
    torch.testing.assert_close(u_pooled, neg_pooled, rtol=0, atol=0)


def test_crop_coordinates_are_where_load_image_cropped(tmp_path):
    """The crop SDXL is told about, found independently: resize the short side with PIL, slide a window, and the
    window closest to what load_image produced is at crop_top_left."""
    import numpy as np
    from PIL import Image

    from invmm.data.images import ImageItem, load_image

    side = 16
    # Sizes whose exact offset (8, 4.87, 9.87, 11.81 resized pixels) is not near a half pixel, where the two
    # nearest windows would tie.
    for w, h in [(48, 24), (37, 23), (30, 67), (52, 21)]:
        yy, xx = np.mgrid[0:h, 0:w]
        arr = (127.5 + 120 * np.sin(xx / 3.1) * np.cos(yy / 2.3)).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "im.png")
        item = load_image(ImageItem(id="im", path=str(tmp_path / "im.png")), mode="L", size=side)
        assert item.original_size == (w, h)
        short = min(w, h)
        big = Image.fromarray(arr).resize((round(w * side / short), round(h * side / short)), Image.Resampling.LANCZOS)
        big = torch.from_numpy(np.asarray(big, dtype=np.float32) / 127.5 - 1)
        errors = {(top, left): float((big[top : top + side, left : left + side] - item.pixels[0]).abs().mean())
                  for top in range(big.shape[0] - side + 1) for left in range(big.shape[1] - side + 1)}
        assert min(errors, key=errors.get) == crop_top_left((w, h), side)


# 4. generate against the pipeline's own loop
@pytest.mark.parametrize("schedule", ["paper", "model"])
def test_generate_matches_the_pipeline(sdxl, sdxl_model, pipe, schedule):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_pretrained(sdxl_model, subfolder="scheduler", local_files_only=True,
                                                   **DDIM_GRIDS[schedule])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    cond = sdxl.prompt_embeddings(CAPTIONS, original_size=(20, 44))
    scales = [1.0, 3.0]
    ours = sdxl.generate(noise, steps=2, cond=cond, guidance=scales, schedule=schedule)
    for i, (caption, scale) in enumerate(zip(CAPTIONS, scales)):
        common = dict(prompt=caption, height=16, width=16, num_inference_steps=2, guidance_scale=scale,
                      latents=noise[i : i + 1], original_size=(44, 20), crops_coords_top_left=(10, 0),
                      target_size=(16, 16))
        latents = pipe(**common, output_type="latent").images
        images = pipe(**common, output_type="pt").images * 2 - 1
        torch.testing.assert_close(ours[i : i + 1], images, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sdxl.decode(latents), images, rtol=1e-4, atol=1e-4)


def test_unconditional_rows_take_their_rows_sizes(sdxl):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([20, 70])
    cond = sdxl.prompt_embeddings(CAPTIONS, original_size=(64, 16))
    u_embeds, u_pooled, default_ids = sdxl.uncond_embeddings(2)
    with torch.no_grad():
        c = sdxl._model_output(x, t, cond)
        u = sdxl._model_output(x, t, (u_embeds, u_pooled, cond[2]))
        wrong = sdxl._model_output(x, t, (u_embeds, u_pooled, default_ids))
        guided = sdxl.guided_output(x, t, cond, 4.0)
    torch.testing.assert_close(guided, u + 4.0 * (c - u), rtol=1e-4, atol=1e-5)
    assert (guided - (wrong + 4.0 * (c - wrong))).abs().max() > 1e-4  # the sizes matter to the UNet


def test_vae_runs_float32_under_fp16_autocast(sdxl):
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    ref = sdxl.decode(x0)
    with torch.autocast("cpu", dtype=torch.float16):
        upcast, raw = sdxl.decode(x0), sdxl.codec.decode(x0)
    assert upcast.dtype == torch.float32 and raw.dtype == torch.float16
    torch.testing.assert_close(upcast, ref, rtol=0, atol=0)


# 5. soft prompts and gradients
def test_one_hot_soft_prompt_equals_the_caption_in_both_encoders(sdxl):
    caption, ids = _long_caption(sdxl)
    one_hot = torch.nn.functional.one_hot(ids[:, 1:76], sdxl.vocab_size).float()
    with torch.no_grad():
        soft = sdxl.soft_prompt_embeddings(one_hot, sdxl.soft_prompt_context("ignored", original_size=(48, 24)))
    ref = sdxl.prompt_embeddings([caption], original_size=(48, 24))
    for a, b in zip(soft, ref):  # both encoders' states, the pooled vector at the end token, the sizes
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_inversion_parameters_get_gradients(sdxl):
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    mu = torch.zeros(1, 4, 8, 8, requires_grad=True)
    logvar = torch.zeros(1, 4, 8, 8, requires_grad=True)
    prompt = SoftPrompt(sdxl, 2.0, None, seed=1)
    prompt.context = sdxl.soft_prompt_context("", original_size=(40, 30))
    eps = reparameterize(mu, logvar, torch.randn(2, 4, 8, 8, generator=g))
    t = sdxl.sample_timesteps(2, g)
    cond = prompt.sample(2, g)
    assert cond[2].tolist() == [[30, 40, 0, 3, 16, 16]] * 2
    loss = (sdxl.predict_x0(sdxl.add_noise(x0.expand(2, -1, -1, -1), eps, t), t, cond) - x0).pow(2).mean()
    loss.backward()
    for p in (mu, logvar, prompt.logits):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Both encoders read the distribution: the gradient through text_encoder_2 alone reaches it too.
    probs = torch.full((1, 75, sdxl.vocab_size), 1.0 / sdxl.vocab_size, requires_grad=True)
    sdxl.soft_prompt_embeddings(probs)[1].sum().backward()
    assert probs.grad.abs().sum() > 0


def test_tokenizers_with_different_vocabularies_invert_clip_l_only(sdxl, sdxl_model):
    from transformers import CLIPTokenizer

    tokenizer_2 = CLIPTokenizer.from_pretrained(sdxl_model / "tokenizer_2", local_files_only=True)
    tokenizer_2.add_tokens(["<new>"])
    other = SDXLAdapter(sdxl.denoiser, sdxl.vae, sdxl.text_encoders, [sdxl.tokenizers[0], tokenizer_2],
                        sdxl.scheduler_config)
    assert other.inverted_encoders == (0,) and other.describe()["inverted_text_encoders"] == ["text_encoder"]
    ids = other._tokenize(0, ["a blue cat"])
    one_hot = torch.nn.functional.one_hot(ids[:, 1:76], other.vocab_size).float().requires_grad_(True)
    soft = other.soft_prompt_embeddings(one_hot, other.soft_prompt_context("a blue cat"))
    for a, b in zip(soft, other.prompt_embeddings(["a blue cat"])):  # text_encoder_2 keeps the caption
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    soft[0].sum().backward()
    assert one_hot.grad.abs().sum() > 0 and not soft[1].requires_grad


# 6. the CLI end to end
@pytest.mark.parametrize("mode", ["caption", "inverted"])
def test_cli_measure(sdxl_model, tmp_path, mode):
    from PIL import Image
    from typer.testing import CliRunner

    from invmm.cli import app

    Image.new("RGB", (24, 16), (30, 160, 90)).save(tmp_path / "green.png")
    out = tmp_path / "run"
    args = ["measure", str(sdxl_model), str(tmp_path / "green.png"), "--out", str(out), "--max-steps", "4",
            "--check-every", "2", "--batch-size", "2", "--sampler-steps", "2", "--similarity", "pixel"]
    res = CliRunner().invoke(app, args + (["--prompt", "a green field"] if mode == "caption" else []))
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["status"] == "ok" and rec["prompt_mode"] == mode and rec["steps"] in (2, 4)
    assert rec["original_size"] == [24, 16] and rec["resized"] is True
    assert rec["prompt"] == "a green field" if mode == "caption" else isinstance(rec["prompt"], str)
    assert rec["kl"] is not None and rec["calls"]["text_encoder"] > 0 and rec["calls"]["vae_decode"] > 0
    assert (rec["success"] and rec["guidance_scale"] is not None) or rec["score_is_inf"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "sdxl" and run["config"]["preset"] == "sdxl"
    assert run["config"]["guidance_scales"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


@pytest.mark.parametrize("mode", ["caption", "inverted"])
def test_a_run_conditions_each_image_on_its_file_size(sdxl_model, tmp_path, monkeypatch, mode):
    """The engine passes every image's file size to the conditioning: a 40 x 24 file's time ids are its own."""
    from PIL import Image

    from invmm import measure, preset
    from invmm.data.images import ImageItem

    seen = []
    for name in ("prompt_embeddings", "soft_prompt_context"):
        original = getattr(SDXLAdapter, name)

        def spy(self, text, original_size=None, _original=original):
            seen.append(original_size)
            return _original(self, text, original_size=original_size)

        monkeypatch.setattr(SDXLAdapter, name, spy)
    Image.new("RGB", (40, 24), (200, 30, 30)).save(tmp_path / "wide.png")
    cfg = preset("sdxl", similarity="pixel", max_steps=2, check_every=2, batch_size=2, sampler_steps=2)
    item = ImageItem(id="wide", path=str(tmp_path / "wide.png"), caption="a red square" if mode == "caption" else None)
    (r,) = measure(str(sdxl_model), [item], cfg)
    assert r.status == "ok" and r.prompt_mode == mode and (40, 24) in seen
