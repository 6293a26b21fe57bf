"""PixArt-alpha / PixArt-Sigma against diffusers' own pipelines and schedulers on the same tiny folders.

The alpha folder has sample_size 128 (the 1024 checkpoint's), so it takes the resolution / aspect-ratio
micro-conditions; the Sigma folder takes none and encodes 300 T5 tokens instead of 120.
"""

import json
import math
import shutil

import pytest
import torch

from invmm.families import load_adapter
from invmm.families.conditions import cond_expand
from invmm.families.pixart import PixArtAdapter
from invmm.inversion.conditioning import SoftPrompt
from invmm.records import InversionRecord
from invmm.zoo.tiny import build_tiny_pixart

LONG = "a red square on a blue ground, " * 16  # about 380 tokens of the character tokenizer: over 300


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixart")
    return {"alpha": build_tiny_pixart(root / "alpha"), "sigma": build_tiny_pixart(root / "sigma", sigma=True)}


@pytest.fixture(scope="module")
def adapters(folders):
    return {k: load_adapter(str(p)) for k, p in folders.items()}


def _pipeline(folder, variant, **components):
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline

    cls = PixArtSigmaPipeline if variant == "sigma" else PixArtAlphaPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _added_cond_kwargs(a, n):
    """The alpha pipeline's micro-conditions, as its __call__ builds them: pixel height/width and their ratio."""
    if a.denoiser.config.sample_size != 128:
        return {"resolution": None, "aspect_ratio": None}
    side = a.image_size
    return {"resolution": torch.tensor([side, side]).repeat(n, 1).float(),
            "aspect_ratio": torch.tensor([float(side / side)]).repeat(n, 1)}


def test_detected_alpha_and_sigma(adapters, folders, tmp_path):
    alpha, sigma = adapters["alpha"], adapters["sigma"]
    for a in (alpha, sigma):
        assert isinstance(a, PixArtAdapter) and a.family == "pixart"
        assert a.capabilities == {"noise_schedule", "text"} and a.learned_sigma
        assert a.default_invert_prompt is False and a.vocab_size == len(a.tokenizers[0])
    assert (alpha.variant, alpha.max_sequence_length, alpha.n_soft_tokens, alpha.micro_conditions) == \
        ("alpha", 120, 119, True)
    assert (sigma.variant, sigma.max_sequence_length, sigma.n_soft_tokens, sigma.micro_conditions) == \
        ("sigma", 300, 299, False)
    assert (alpha.image_size, alpha.latent_shape) == (256, (4, 128, 128))
    assert (sigma.image_size, sigma.latent_shape) == (16, (4, 8, 8))
    json.dumps(alpha.describe())
    # A folder without model_index.json is read as the alpha pipeline reads any folder: 120 tokens.
    bare = shutil.copytree(folders["sigma"], tmp_path / "bare")
    (bare / "model_index.json").unlink()
    a = load_adapter(str(bare))
    assert (a.pipeline_class, a.max_sequence_length) == (None, 120)


def test_ddim_schedule_is_the_dpm_solver_configs(adapters, folders):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler.from_pretrained(folders["alpha"] / "scheduler")
    ddim = DDIMScheduler.from_config(dpm.config)
    assert type(dpm).__name__ == adapters["alpha"].describe()["scheduler_class"]
    torch.testing.assert_close(ddim.betas, dpm.betas, rtol=0, atol=0)
    torch.testing.assert_close(adapters["alpha"].alphas_cumprod, dpm.alphas_cumprod.float(), rtol=0, atol=0)
    # The paper's DDIM grid: trailing, 999 down to 19 for 50 steps, alpha_bar = 1 after the last step.
    paper = adapters["alpha"].sampler(50, "paper")
    assert paper.timesteps[0] == 999 and paper.timesteps[-1] == 19 and len(paper.timesteps) == 50
    assert paper.final_alpha_cumprod == 1.0 and not paper.config.clip_sample
    # The model's own grid never clips latents: DPM-Solver does not, whatever DDIM's default.
    assert not adapters["alpha"].sampler(10, "model").config.clip_sample


@pytest.mark.parametrize("variant", ["alpha", "sigma"])
def test_x0_and_add_noise_against_ddim(adapters, variant):
    from diffusers import DDIMScheduler

    a = adapters[variant]
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, *a.latent_shape, generator=g), torch.randn(2, *a.latent_shape, generator=g)
    embeds, mask = a.prompt_embeddings(["a red square", "two blue dots"])
    sched = a.sampler(4, "paper")
    for t in sched.timesteps[:2]:
        with torch.no_grad():
            raw = a.denoiser(x, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=t.expand(2),
                                added_cond_kwargs=_added_cond_kwargs(a, 2)).sample
            ours = a.predict_x0(x, t.expand(2), (embeds, mask))
        assert raw.shape[1] == 8  # learned sigma: the first half is the noise prediction
        ref = sched.step(raw.chunk(2, dim=1)[0], t, x).pred_original_sample
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    t = torch.tensor([0, 731])
    ref = DDIMScheduler.from_config(a.scheduler_config).add_noise(x, eps, t)
    torch.testing.assert_close(a.add_noise(x, eps, t), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["alpha", "sigma"])
def test_conditioning_equals_encode_prompt(adapters, folders, variant):
    a = adapters[variant]
    pipe = _pipeline(folders[variant], variant)
    prompts = ["  A Red Square ", LONG]
    # The pipeline's own default max_sequence_length (120 alpha, 300 Sigma) and its caption handling
    # without the optional bs4/ftfy cleaning.
    pe, pm, ne, nm = pipe.encode_prompt(prompts, do_classifier_free_guidance=True, negative_prompt="",
                                        device=torch.device("cpu"), clean_caption=False)
    embeds, mask = a.prompt_embeddings(prompts)
    assert pe.shape[1] == a.max_sequence_length and mask[1].all() and mask[0].sum() < 20
    torch.testing.assert_close(embeds, pe, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, pm)
    u_embeds, u_mask = a.uncond_embeddings(2)
    torch.testing.assert_close(u_embeds, ne, rtol=1e-5, atol=1e-5)
    assert torch.equal(u_mask, nm) and u_mask.sum() == 2  # "" is "</s>" alone


@pytest.mark.parametrize("variant", ["alpha", "sigma"])
def test_generate_equals_the_pipeline_loop(adapters, folders, variant):
    a = adapters[variant]
    noise = torch.randn(2, *a.latent_shape, generator=torch.Generator().manual_seed(5))
    pipe = _pipeline(folders[variant], variant, scheduler=a.sampler(2, "paper"))
    latents = pipe(prompt=["a green circle"] * 2, negative_prompt="", num_inference_steps=2, guidance_scale=3.0,
                   height=a.image_size, width=a.image_size, latents=noise.clone(), output_type="latent",
                   clean_caption=False, use_resolution_binning=False).images
    cond = cond_expand(a.prompt_embeddings(["a green circle"]), 2)
    ours = a.generate(noise, steps=2, cond=cond, guidance=3.0, schedule="paper")
    with torch.no_grad():
        torch.testing.assert_close(ours, a.decode(latents), rtol=1e-5, atol=1e-5)
    assert (a.decode(latents) - a.generate(noise, steps=2, cond=cond, guidance=1.0, schedule="paper")).abs().max() \
        > 1e-3  # guidance changed the sample: the comparison above saw it


@pytest.mark.parametrize("variant", ["alpha", "sigma"])
def test_one_hot_soft_prompt_is_a_full_length_caption(adapters, variant):
    a = adapters[variant]
    ids, _ = a.tokenize([LONG])
    one_hot = torch.nn.functional.one_hot(ids[:, : a.n_soft_tokens], a.vocab_size).float()
    with torch.no_grad():
        embeds, mask = a.soft_prompt_embeddings(one_hot)
    ref_embeds, ref_mask = a.prompt_embeddings([LONG])
    assert ids[0, -1] == a.tokenizers[0].eos_token_id and torch.equal(mask, ref_mask)
    torch.testing.assert_close(embeds, ref_embeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["alpha", "sigma"])
def test_inversion_parameters_get_gradients(adapters, variant):
    a = adapters[variant]
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(*a.latent_shape, generator=g)
    mu = torch.zeros_like(x0, requires_grad=True)
    logvar = torch.zeros_like(x0, requires_grad=True)
    prompt = SoftPrompt(a, tau=2.0, seed=3)
    cond = prompt.sample(2, g)
    z, eps = torch.randn(2, *x0.shape, generator=g), torch.randn(2, *x0.shape, generator=g)
    t = torch.tensor([100, 800])
    x_t = a.add_noise(mu + (0.5 * logvar).exp() * z, eps, t)
    ((a.predict_x0(x_t, t, cond) - x0) ** 2).mean().backward()
    for p in (mu, logvar, prompt.logits):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert prompt.logits.shape == (a.n_soft_tokens, a.vocab_size)


@pytest.mark.parametrize("mode", ["caption", "inverted"])
def test_cli_measure_end_to_end(folders, tmp_path, mode):
    from PIL import Image
    from typer.testing import CliRunner

    from invmm.cli import app

    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "green.png")
    out = tmp_path / "run"
    prompt = ["--prompt", "a green square"] if mode == "caption" else ["--invert-prompt"]
    res = CliRunner().invoke(app, ["measure", str(folders["sigma"]), str(tmp_path / "green.png"), *prompt,
                                   "--out", str(out), "--max-steps", "4", "--check-every", "2", "--batch-size", "2",
                                   "--sampler-steps", "2", "--similarity", "pixel"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["status"] == "ok" and rec["prompt_mode"] == mode and rec["steps"] in (2, 4)
    assert rec["prompt"] == "a green square" if mode == "caption" else isinstance(rec["prompt"], str)
    assert rec["checks"][0][0] == 2 and (rec["success"] or math.isinf(InversionRecord.from_json(rec).score))
    assert rec["calls"]["opt_forward"] == 2 * rec["steps"] and rec["calls"]["text_encoder"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "pixart" and run["model"]["variant"] == "sigma"
    assert run["config"]["preset"] == "pixart" and run["config"]["guidance_scales"] == [1.0, 2.0, 3.0, 4.0, 5.0,
                                                                                        6.0, 7.0]


def test_no_caption_needs_an_explicit_choice(folders, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from invmm.cli import app

    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "g.png")
    args = ["measure", str(folders["sigma"]), str(tmp_path / "g.png"), "--max-steps", "2", "--check-every", "2",
            "--batch-size", "2", "--sampler-steps", "2", "--similarity", "pixel"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--invert-prompt" in res.output and not (tmp_path / "a" / "results.jsonl").exists()
    res = CliRunner().invoke(app, [*args, "--no-invert-prompt", "--out", str(tmp_path / "b")])
    rec = json.loads((tmp_path / "b" / "results.jsonl").read_text())
    assert res.exit_code == 0 and rec["prompt_mode"] == "caption" and rec["prompt"] == ""
