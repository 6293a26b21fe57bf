"""Flux.1 (dev: guidance embedded; schnell: no guidance) against diffusers' own FluxPipeline and scheduler."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from invmm.cli import app
from invmm.config import default_config
from invmm.families import load_adapter
from invmm.families.flux import FluxAdapter, image_ids, pack, unpack
from invmm.functional import reparameterize
from invmm.inversion.conditioning import SoftPrompt
from invmm.inversion.cost import RowCounter
from invmm.zoo.tiny import build_tiny_flux

KINDS = {"dev": True, "schnell": False}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {k: build_tiny_flux(tmp_path_factory.mktemp(k) / "m", guidance_embeds=g) for k, g in KINDS.items()}


@pytest.fixture(scope="module")
def adapters(folders):
    return {k: load_adapter(str(p)) for k, p in folders.items()}


@pytest.fixture(scope="module")
def pipelines(folders):
    from diffusers import FluxPipeline

    pipes = {k: FluxPipeline.from_pretrained(p, local_files_only=True) for k, p in folders.items()}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def _reference_scheduler(folder, steps, seq_len):
    """The grid FluxPipeline samples on: its sigmas and its mu through the saved scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    c = sched.config
    mu = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return sched, mu


@pytest.mark.parametrize("kind", list(KINDS))
def test_detected_with_its_guidance_and_preset(adapters, kind):
    a = adapters[kind]
    assert isinstance(a, FluxAdapter) and a.family == "flux"
    assert a.guidance_kind == ("embedded" if kind == "dev" else "none")
    assert a.latent_shape == (16, 8, 8) and a.image_size == a.native_resolution == 16
    cfg = default_config(a)
    assert cfg.preset == ("flux" if kind == "dev" else "flux-schnell") and cfg.sampler == "euler"
    assert cfg.guidance_scales == ([1.0, 2.0, 3.0, 4.0, 5.0] if kind == "dev" else [1.0])
    assert a.describe()["family"] == "flux" and json.dumps(a.describe())


@pytest.mark.parametrize("kind", list(KINDS))
def test_training_sigmas_and_forward_process_match_the_scheduler(adapters, folders, kind):
    a = adapters[kind]
    sched, mu = _reference_scheduler(folders[kind], 1000, 16)
    assert a.mu == pytest.approx(mu)
    torch.testing.assert_close(a.sigmas, sched.sigmas[:-1])
    torch.testing.assert_close(a.timesteps, sched.timesteps)
    if kind == "dev":  # dynamic shifting at mu 1.15 lifts the middle of the grid well above 0.5
        assert a.sigmas[500] > 0.7
    else:  # schnell: no shift at all
        torch.testing.assert_close(a.sigmas, torch.linspace(1.0, 1e-3, 1000), rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, *a.latent_shape, generator=g), torch.randn(3, *a.latent_shape, generator=g)
    idx = torch.tensor([0, 500, 999])
    ref = torch.cat([sched.scale_noise(x0[i : i + 1], sched.timesteps[idx[i]][None], eps[i : i + 1])
                     for i in range(3)])
    torch.testing.assert_close(a.add_noise(x0, eps, idx), ref, rtol=1e-5, atol=1e-5)


def test_mu_follows_the_image_sequence_length(folders):
    """At 12 px the latent is 6 x 6, 9 packed patches: a mu between the config's base and max shift."""
    a = load_adapter(str(folders["dev"]), resolution=12)
    _, mu = _reference_scheduler(folders["dev"], 1000, 9)
    assert a.image_seq_len == 9 and a.mu == pytest.approx(mu) and 0.5 < mu < 1.15
    assert a.check_timesteps(3) == [round(float(t), 3) for t in _reference_scheduler(folders["dev"], 3, 9)[0].timesteps]


@pytest.mark.parametrize("kind", list(KINDS))
def test_x0_from_the_packed_velocity(adapters, pipelines, kind):
    a, pipe = adapters[kind], pipelines[kind]
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, *a.latent_shape, generator=g)
    idx = torch.tensor([100, 900])
    embeds, pooled, text_ids = pipe.encode_prompt(["a cat", "a dog"], max_sequence_length=a.max_sequence_length)
    with torch.no_grad():
        v = pipe.transformer(hidden_states=pipe._pack_latents(x_t, 2, 16, 8, 8), encoder_hidden_states=embeds,
                             pooled_projections=pooled, timestep=a.timesteps[idx] / 1000,
                             img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32), txt_ids=text_ids,
                             guidance=torch.ones(2) if kind == "dev" else None).sample
        v = pipe._unpack_latents(v, 16, 16, pipe.vae_scale_factor)
        s = a.sigmas[idx].view(-1, 1, 1, 1)
        torch.testing.assert_close(a.predict_x0(x_t, idx, (embeds, pooled)), x_t - s * v)


@pytest.mark.parametrize("kind", list(KINDS))
def test_conditioning_and_packing_match_the_pipeline(adapters, pipelines, kind):
    a, pipe = adapters[kind], pipelines[kind]
    texts = ["a red apple", "", "a very long caption " * 6]
    embeds, pooled, text_ids = pipe.encode_prompt(texts, max_sequence_length=a.max_sequence_length)
    mine = a.prompt_embeddings(texts)
    torch.testing.assert_close(mine[0], embeds)
    torch.testing.assert_close(mine[1], pooled)
    torch.testing.assert_close(a._txt_ids, text_ids)
    torch.testing.assert_close(a.uncond_embeddings(1)[0], embeds[1:2])
    x = torch.randn(3, 16, 6, 10)  # not square: rows and columns must not swap
    packed = pipe._pack_latents(x, 3, 16, 6, 10)
    torch.testing.assert_close(pack(x), packed)
    torch.testing.assert_close(unpack(packed, 6, 10), pipe._unpack_latents(packed, 12, 20, pipe.vae_scale_factor))
    torch.testing.assert_close(unpack(packed, 6, 10), x)
    torch.testing.assert_close(image_ids(6, 10, "cpu"), pipe._prepare_latent_image_ids(3, 3, 5, "cpu", torch.float32))


def test_soft_tokens_as_a_full_length_prompt(adapters, pipelines):
    """One-hot soft tokens of a caption that fills CLIP's 75 positions give exactly the pipeline's conditioning:
    the soft prompt is a full-length prompt, its pooled vector read after all 75 tokens; T5 keeps the caption."""
    a, pipe = adapters["dev"], pipelines["dev"]
    caption = "memorized photo of a red apple on a wooden table, studio light " * 2
    ids = a._tokenize(0, [caption], a.max_length)
    assert ids[0, -1] == a.soft_tokenizer.eos_token_id and (ids[0, 1:-1] != a.soft_tokenizer.eos_token_id).all()
    one_hot = torch.nn.functional.one_hot(ids[:, 1:-1], a.vocab_size).float()
    embeds, pooled, _ = pipe.encode_prompt(caption, max_sequence_length=a.max_sequence_length)
    with torch.no_grad():
        soft = a.soft_prompt_embeddings(one_hot.expand(2, -1, -1), a.soft_prompt_context(caption))
    torch.testing.assert_close(soft[0], embeds.expand(2, -1, -1))
    torch.testing.assert_close(soft[1], pooled.expand(2, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "resolution", "guidance"), [("dev", 16, 3.0), ("dev", 12, 1.0), ("schnell", 16, 1.0)])
def test_two_step_generate_matches_the_pipeline(folders, pipelines, kind, resolution, guidance):
    a = load_adapter(str(folders[kind]), resolution=resolution)
    pipe = pipelines[kind]
    side = a.latent_shape[1]
    noise = torch.randn(2, *a.latent_shape, generator=torch.Generator().manual_seed(4))
    common = dict(prompt="a red apple", num_images_per_prompt=2, height=resolution, width=resolution,
                  num_inference_steps=2, max_sequence_length=a.max_sequence_length,
                  latents=pipe._pack_latents(noise, 2, 16, side, side),
                  guidance_scale=guidance if kind == "dev" else 0.0)
    latents = pipe(**common, output_type="latent").images
    images = pipe(**common, output_type="pt").images  # [0, 1], through the VAE's scale and shift
    captured = []
    decode = a.codec.decode
    a.codec.decode = lambda x0: captured.append(x0) or decode(x0)  # the final latents, before the VAE
    mine = a.generate(noise, steps=2, cond=a.prompt_embeddings(["a red apple"] * 2), guidance=guidance)
    torch.testing.assert_close(captured[0], pipe._unpack_latents(latents, resolution, resolution,
                                                                 pipe.vae_scale_factor), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((mine + 1) / 2, images, rtol=1e-4, atol=1e-4)


def test_dev_takes_one_guidance_per_row_in_one_forward(adapters):
    a = adapters["dev"]
    x = torch.randn(3, *a.latent_shape, generator=torch.Generator().manual_seed(5))
    t = a.sampler(2).timesteps[0].expand(3)
    cond = a.prompt_embeddings(["a red apple"] * 3)
    counter = RowCounter([a.denoiser])
    with torch.no_grad(), counter.attached():
        rows = a.guided_output(x, t, cond, [1.0, 3.0, 5.0])
    assert counter.rows == 3  # no unconditional pass
    with torch.no_grad():
        for i, scale in enumerate([1.0, 3.0, 5.0]):
            alone = a.guided_output(x[i : i + 1], t[i : i + 1], tuple(c[i : i + 1] for c in cond), scale)
            torch.testing.assert_close(rows[i : i + 1], alone, rtol=1e-4, atol=1e-5)
        # The scale reaches the model: another guidance, another velocity.
        assert not torch.allclose(rows[1], a.guided_output(x, t, cond, 1.0)[1])


def test_schnell_ignores_guidance(adapters):
    a = adapters["schnell"]
    x = torch.randn(3, *a.latent_shape, generator=torch.Generator().manual_seed(6))
    t = a.sampler(2).timesteps[0].expand(3)
    cond = a.prompt_embeddings(["a red apple"] * 3)
    counter = RowCounter([a.denoiser])
    with torch.no_grad(), counter.attached():
        plain = a.guided_output(x, t, cond, 1.0)
        for guidance in (3.0, [1.0, 3.0, 5.0]):
            torch.testing.assert_close(a.guided_output(x, t, cond, guidance), plain)
    assert counter.rows == 9


@pytest.mark.parametrize("kind", list(KINDS))
def test_inversion_parameters_get_gradients(adapters, kind):
    a = adapters[kind]
    prompt = SoftPrompt(a, tau=2.0, caption="a red apple", seed=0)
    g = torch.Generator().manual_seed(7)
    x0 = a.encode(torch.rand(1, 3, 16, 16, generator=g) * 2 - 1)
    mu = torch.zeros(a.latent_shape, requires_grad=True)
    logvar = torch.zeros(a.latent_shape, requires_grad=True)
    eps = reparameterize(mu[None], logvar[None], torch.randn(2, *a.latent_shape, generator=g))
    t = a.sample_timesteps(2, g)
    x0_hat = a.predict_x0(a.add_noise(x0.expand(2, -1, -1, -1), eps, t), t, prompt.sample(2, g))
    ((x0_hat - x0) ** 2).mean().backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    # Every one of the 75 soft tokens reaches CLIP's pooled vector, not only the first.
    assert (prompt.logits.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize(("kind", "caption"), [("dev", "a purple square"), ("dev", None), ("schnell", None)])
def test_measure_end_to_end(folders, tmp_path, kind, caption):
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 20, 200)).save(tmp_path / "p.png")
    out = tmp_path / "run"
    args = ["measure", str(folders[kind]), str(tmp_path / "p.png"), "--out", str(out), "--max-steps", "4",
            "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2", "--similarity", "pixel"]
    res = CliRunner().invoke(app, args + (["--prompt", caption] if caption else []))
    assert res.exit_code == 0, res.output
    (line,) = (out / "results.jsonl").read_text().splitlines()
    r = json.loads(line)
    assert r["status"] == "ok" and r["steps"] in (2, 4) and r["model"] == str(folders[kind])
    assert r["prompt_mode"] == ("caption" if caption else "inverted") and isinstance(r["prompt"], str)
    assert r["calls"]["opt_forward"] == r["steps"] * 2 and r["calls"]["text_encoder"] > 0
    assert (r["success"] and r["guidance_scale"] in (1.0, 2.0, 3.0, 4.0, 5.0)) or r["score_is_inf"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "flux"
    assert run["model"]["guidance_kind"] == ("embedded" if kind == "dev" else "none")
    assert run["config"]["preset"] == ("flux" if kind == "dev" else "flux-schnell")
    assert run["config"]["guidance_scales"] == ([1.0, 2.0, 3.0, 4.0, 5.0] if kind == "dev" else [1.0])
