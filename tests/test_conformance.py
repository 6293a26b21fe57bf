"""Settings that follow the InvMM authors' code (issue 9): VQ latent scale, the check's DDIM grid, the soft
prompt at the check, the SD3 resolution and VAE posterior draws."""

import json

import pytest
import torch
from typer.testing import CliRunner

from invmm import measure, preset
from invmm.cli import app
from invmm.config import default_config
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.codecs import resolve_latent_scale
from invmm.families.sd3 import SD3Adapter
from invmm.functional import gumbel_noise, gumbel_softmax_sample, seed_from
from invmm.inversion import Inverter, Target, inverter
from invmm.inversion.conditioning import SoftPrompt
from invmm.similarity import build_similarity
from invmm.zoo.tiny import build_tiny_ldm, build_tiny_sd, build_tiny_sd3

runner = CliRunner()


def _drop_scaling_factor(model_dir, component="vqvae"):
    path = model_dir / component / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("scaling_factor")
    path.write_text(json.dumps(cfg))


# --- 1. VQ latent scale ---

def test_vq_model_without_a_saved_scale_uses_unscaled_latents(tmp_path):
    model = build_tiny_ldm(tmp_path / "vq", vae_kind="vq")
    _drop_scaling_factor(model)
    adapter = load_adapter(str(model))
    # diffusers fills in 0.18215; the LDM code (and the authors') use VQ latents as they are.
    assert adapter.vae.config.scaling_factor == pytest.approx(0.18215)
    assert (adapter.codec.scaling_factor, adapter.codec.scale_source) == (1.0, "default")
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(adapter.encode(img), adapter.vae.encode(img).latents)
    d = adapter.describe()
    assert d["scaling_factor"] == 1.0 and d["scaling_factor_source"] == "default"


def test_vq_model_with_a_saved_scale_and_a_user_scale(tmp_path):
    model = build_tiny_ldm(tmp_path / "vq", vae_kind="vq")
    path = model / "vqvae" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "scaling_factor": 0.5}))
    adapter = load_adapter(str(model))
    assert (adapter.codec.scaling_factor, adapter.codec.scale_source) == (0.5, "config")
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(adapter.encode(img), adapter.vae.encode(img).latents * 0.5)
    user = load_adapter(str(model), latent_scale=2.0)
    assert (user.codec.scaling_factor, user.codec.scale_source) == (2.0, "user")


def test_latent_scale_without_a_saved_config_asks_diffusers_what_was_stated():
    from invmm.zoo.tiny import tiny_vae

    assert resolve_latent_scale(tiny_vae("vq"), None) == (1.0, "default")
    assert resolve_latent_scale(tiny_vae("vq", scaling_factor=0.3), None) == (0.3, "config")
    # A KL autoencoder keeps diffusers' scale, as its pipelines use it.
    assert resolve_latent_scale(tiny_vae("kl"), {}) == (pytest.approx(0.18215), "default")
    with pytest.raises(ValueError, match="must be > 0"):
        resolve_latent_scale(tiny_vae("kl"), {}, -1.0)


def test_cli_latent_scale_is_recorded_and_refused_on_pixel_models(tmp_path, tiny_model):
    model = build_tiny_ldm(tmp_path / "vq", vae_kind="vq")
    _drop_scaling_factor(model)
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    common = ["--similarity", "pixel", "--max-steps", "2", "--check-every", "2", "--sampler-steps", "2"]
    res = runner.invoke(app, ["measure", str(model), str(tmp_path / "red.png"), "--out", str(tmp_path / "r"),
                              "--latent-scale", "0.25", *common])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["model"]["scaling_factor"] == 0.25 and info["model"]["scaling_factor_source"] == "user"
    res = runner.invoke(app, ["measure", str(tiny_model), str(tmp_path / "red.png"), "--out", str(tmp_path / "p"),
                              "--latent-scale", "0.25", *common])
    assert res.exit_code == 2 and "needs a VAE" in res.output
    assert not (tmp_path / "p").exists()


# --- 2. The success check's DDIM grid ---

def test_paper_grid_is_trailing_to_alpha_bar_one_without_clipping(toy_model):
    adapter = load_adapter(str(toy_model))
    assert adapter.check_timesteps(200, "paper") == list(range(999, 3, -5))  # 999, 994, ..., 4
    assert adapter.check_timesteps(50, "paper") == list(range(999, 18, -20))  # 999, 979, ..., 19
    sched = adapter.sampler(200, "paper")
    assert sched.final_alpha_cumprod.item() == 1.0 and sched.config.clip_sample is False
    # The toy model's own config: a leading grid that clips every step.
    assert adapter.check_timesteps(50, "model")[:2] == [980, 960] and adapter.check_timesteps(50, "model")[-1] == 0
    assert adapter.sampler(50, "model").config.clip_sample is True


def test_generate_on_the_paper_grid_equals_diffusers_ddim(toy_model):
    from diffusers import DDIMScheduler

    adapter = load_adapter(str(toy_model))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = DDIMScheduler.from_config(adapter.scheduler_config, timestep_spacing="trailing", set_alpha_to_one=True,
                                    clip_sample=False)
    ref.set_timesteps(10)
    x = noise.clone()
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(adapter.denoiser(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(adapter.generate(noise, steps=10, schedule="paper"), x.clamp(-1, 1))
    assert not torch.allclose(adapter.generate(noise, steps=10, schedule="model"), x.clamp(-1, 1))


def test_run_json_records_the_check_grid(tmp_path, toy_model, toy_images):
    path = next(iter(toy_images.values()))[0]
    cfg = preset("ddpm", similarity="pixel", max_steps=2, check_every=2, sampler_steps=50)
    assert cfg.check_schedule == "paper"
    measure(str(toy_model), [path], cfg, out=tmp_path / "run")
    grid = json.loads((tmp_path / "run" / "run.json").read_text())["check_grid"]
    assert grid == {"schedule": "paper", "steps": 50, "first": 999, "last": 19}
    with pytest.raises(ValueError, match="check_schedule"):
        preset("ddpm", check_schedule="leading")
    with pytest.raises(ValueError, match="Euler"):
        preset("sd3", check_schedule="paper")


# --- 3. The soft prompt at the check ---

@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return load_adapter(str(build_tiny_sd(tmp_path_factory.mktemp("sd") / "m")))


@pytest.fixture(scope="module")
def sd3_model(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "m")


def test_check_prompt_is_one_gumbel_draw_from_the_image_stream_on_sd(sd):
    prompt = SoftPrompt(sd, tau=2.0, seed=11)
    with torch.no_grad():
        prompt.logits.copy_(torch.randn(prompt.logits.shape, generator=torch.Generator().manual_seed(0)))
    check = prompt.for_check(4)
    g = gumbel_noise((1, *prompt.logits.shape), torch.Generator().manual_seed(11))
    expected = sd.soft_prompt_embeddings(gumbel_softmax_sample(prompt.logits.detach(), g, 2.0))
    torch.testing.assert_close(check, expected.expand(4, -1, -1))  # one draw, shared by the samples
    mean = sd.soft_prompt_embeddings(torch.softmax(prompt.logits.detach() / 2.0, -1)[None])
    assert (check[0] - mean[0]).abs().max() > 1e-3


def test_check_prompt_is_one_draw_per_sample_on_sd3(sd3_model):
    sd3 = load_adapter(str(sd3_model))
    prompt = SoftPrompt(sd3, tau=2.0, caption="a cat", seed=5)
    with torch.no_grad():
        prompt.logits.copy_(torch.randn(prompt.logits.shape, generator=torch.Generator().manual_seed(0)))
    embeds, pooled = prompt.for_check(3)
    g = gumbel_noise((3, *prompt.logits.shape), torch.Generator().manual_seed(5))
    ref_embeds, ref_pooled = sd3.soft_prompt_embeddings(gumbel_softmax_sample(prompt.logits.detach(), g, 2.0),
                                                        prompt.context)
    torch.testing.assert_close(embeds, ref_embeds)
    torch.testing.assert_close(pooled, ref_pooled)
    assert (embeds[0] - embeds[1]).abs().max() > 1e-4


def test_inverter_check_draws_once_per_check_from_the_image_stream(sd, monkeypatch):
    """The check's prompt comes from the image's Gumbel stream and is the same at every guidance scale."""
    cfg = preset("sd", similarity="pixel", max_steps=2, check_every=2, sampler_steps=2,
                 guidance_scales=[1.0, 3.0], threshold=2.0, invert_prompt=True)  # never succeeds: both scales
    seen, prompts = [], []
    real_generate, real_conditioner = sd.generate, inverter.conditioner

    def spy(noise, **kw):
        seen.append(kw["cond"].clone())
        return real_generate(noise, **kw)

    def keep(*args, **kw):
        prompts.append(real_conditioner(*args, **kw))
        return prompts[-1]

    monkeypatch.setattr(sd, "generate", spy)
    monkeypatch.setattr(inverter, "conditioner", keep)
    pix = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = Inverter(sd, cfg, build_similarity("pixel"), batch_images=1).run([Target(id="x", pixels=pix)])
    # One check; its first round runs both scales in one call (a row each), and both rows fail there. Then, the
    # last check, the memorization map's call (its noise from its own stream, the check's prompt draws).
    assert out[0].result.steps == 2 and len(seen) == 2 and out[0].result.prompt_mode == "inverted"
    torch.testing.assert_close(seen[0][0], seen[0][1])
    # Replay the image's stream: the 2 optimisation steps draw [B, L, V] each, then the check draws [1, L, V].
    stream = torch.Generator().manual_seed(seed_from(seed_from(cfg.seed, "x"), "gumbel"))
    shape = (sd.n_soft_tokens, sd.vocab_size)
    for _ in range(2):
        gumbel_noise((cfg.batch_size, *shape), stream)
    logits = prompts[0].logits.detach()  # the check comes after the last update
    expected = sd.soft_prompt_embeddings(gumbel_softmax_sample(logits, gumbel_noise((1, *shape), stream), 2.0))
    torch.testing.assert_close(seen[0], expected.expand(len(seen[0]), -1, -1))


# --- 4. Resolution ---

def test_sd3_runs_at_a_resolution_other_than_its_native_one(tmp_path, sd3_model):
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "g.png")
    adapter = load_adapter(str(sd3_model), resolution=32)
    assert (adapter.image_size, adapter.native_resolution) == (32, 16)
    cfg = preset("sd3", similarity="pixel", max_steps=2, check_every=2, sampler_steps=2)
    res = measure(adapter, [ImageItem(id="g", path=str(tmp_path / "g.png"), caption="green")], cfg,
                  out=tmp_path / "run")
    assert res[0].status == "ok" and res[0].steps == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"]["resolution"] == 32 and info["model"]["native_resolution"] == 16
    from safetensors.torch import load_file

    saved = load_file(next((tmp_path / "run").rglob("*.safetensors")))
    assert saved["mu"].shape == (4, 16, 16)  # latent side 32 / 2: not the native 8
    with pytest.raises(Exception, match="multiple of 2"):
        load_adapter(str(sd3_model), resolution=33)


def test_sd3_larger_than_512_is_measured_at_512_by_default():
    from diffusers import SD3Transformer2DModel

    from invmm.zoo.tiny import tiny_clip, tiny_vae
    from invmm.zoo.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    big = SD3Transformer2DModel(sample_size=512, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=512)
    encoders = [tiny_clip(tok.get_vocab(), projection=True), tiny_clip(tok.get_vocab(), projection=True), None]
    sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    adapter = SD3Adapter(big, tiny_vae("kl"), encoders, [tok, tok, None], sched)
    assert (adapter.native_resolution, adapter.image_size) == (1024, 512)
    assert SD3Adapter(big, tiny_vae("kl"), encoders, [tok, tok, None], sched, resolution=1024).image_size == 1024


def test_pixel_resolution_option_and_its_error(tmp_path, tiny_model):
    assert load_adapter(str(tiny_model), resolution=16).image_size == 16
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    res = runner.invoke(app, ["measure", str(tiny_model), str(tmp_path / "g.png"), "--out", str(tmp_path / "r"),
                              "--resolution", "7"])
    assert res.exit_code == 2 and "resolution 7" in res.output and "multiple of 2" in res.output


# --- 5. VAE posterior draws ---

def test_kl_posterior_is_drawn_from_the_image_stream(sd3_model):
    adapter = load_adapter(str(sd3_model))
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = adapter.encode(img, generator=torch.Generator().manual_seed(1))
    b = adapter.encode(img, generator=torch.Generator().manual_seed(1))
    mode = adapter.encode(img)
    torch.testing.assert_close(a, b)
    assert (a - mode).abs().max() > 1e-4
    with torch.no_grad():
        dist = adapter.vae.encode(img).latent_dist
        ref = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, (ref - adapter.codec.shift_factor) * adapter.codec.scaling_factor)


# The inversion's latents: the posterior's mode where the authors' SD 1.x/2.x scripts take it (and for the SD-like
# families they never ran: SDXL, PixArt), one draw from the image's stream for LDM, SD3 (theirs), DiT and Flux.
POSTERIOR = {"ldm-kl": "sample", "sd": "mode", "sd-v": "mode", "sd3": "sample", "sdxl": "mode",
             "flux-dev": "sample", "flux-schnell": "sample", "pixart-alpha": "mode", "pixart-sigma": "mode",
             "dit": "sample"}


@pytest.mark.parametrize("family", sorted(POSTERIOR))
def test_inversion_encodes_with_the_familys_posterior(tiny_family, family):
    from families import images

    adapter = load_adapter(str(tiny_family(family)))
    assert adapter.describe()["vae_encoding"] == f"posterior {POSTERIOR[family]}"
    cfg = default_config(adapter, similarity="pixel")
    x = images(adapter, 1)[0]
    x0 = Inverter(adapter, cfg, build_similarity("pixel")).start(Target("i", x, caption="a cat")).x0
    with torch.no_grad():
        dist = adapter.vae.encode(x[None]).latent_dist
        g = torch.Generator().manual_seed(seed_from(seed_from(cfg.seed, "i"), "vae"))
        latents = dist.mode() if POSTERIOR[family] == "mode" else dist.sample(g)
    torch.testing.assert_close(x0[None], (latents - adapter.codec.shift_factor) * adapter.codec.scaling_factor)
    # The baseline scorers encode without a generator: the mode, in every family.
    torch.testing.assert_close(adapter.encode(x[None]), (dist.mode() - adapter.codec.shift_factor)
                               * adapter.codec.scaling_factor)


def test_audit_resume_refuses_another_resolution(tmp_path, toy_model, toy_images):
    data = next(iter(toy_images.values()))[0].parent
    common = ["--similarity", "pixel", "--max-steps", "2", "--check-every", "2", "--sampler-steps", "2"]
    args = ["audit", str(toy_model), str(data), "--out", str(tmp_path / "run"), *common]
    assert runner.invoke(app, [*args, "--resolution", "16"]).exit_code == 0
    before = (tmp_path / "run" / "results.jsonl").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "resolution: 16 -> 8" in res.output
    assert (tmp_path / "run" / "results.jsonl").read_text() == before
