import pytest
import torch
from diffusers import DDPMScheduler
from same_results import close

from invmm.families import load_adapter
from invmm.functional import seed_from
from invmm.scorers import LossScorer, PIAScorer, ScorerError, build_scorer, split_specs
from invmm.zoo.tiny import build_tiny_pixel, build_tiny_sd3


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    return load_adapter(str(build_tiny_pixel(tmp_path_factory.mktemp("p") / "m")))


def images(n, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loss_matches_a_direct_computation(pixel):
    x0, ids = images(2), ["a", "b"]
    got = LossScorer(pixel, t=30, n_draws=3).score(x0, ids, seed=5)
    sched = DDPMScheduler.from_config(pixel.scheduler_config)
    for i, image_id in enumerate(ids):
        g = torch.Generator().manual_seed(seed_from(5, "loss", image_id))
        eps = torch.randn((3, 1, 8, 8), generator=g)
        t = torch.full((3,), 30)
        with torch.no_grad():
            pred = pixel.denoiser(sched.add_noise(x0[i : i + 1].expand(3, -1, -1, -1), eps, t), t).sample
        ref = (eps - pred).pow(2).flatten(1).sum(1).mean().item()
        assert got[i] == pytest.approx(ref, rel=1e-4)


def test_pia_matches_a_direct_two_call_computation(pixel):
    x0 = images(3, seed=1)
    got = PIAScorer(pixel, t=50).score(x0, ["a", "b", "c"])
    sched = DDPMScheduler.from_config(pixel.scheduler_config)
    with torch.no_grad():
        eps0 = pixel.denoiser(x0, torch.zeros(3, dtype=torch.long)).sample
        t = torch.full((3,), 50)
        pred = pixel.denoiser(sched.add_noise(x0, eps0, t), t).sample
    ref = torch.linalg.vector_norm((eps0 - pred).flatten(1), ord=4, dim=1)
    torch.testing.assert_close(torch.tensor(got), ref, rtol=1e-4, atol=1e-6)
    assert PIAScorer(pixel, t=50).score(x0, ["a", "b", "c"]) == got  # deterministic


def test_eps_from_v_prediction(tmp_path):
    a = load_adapter(str(build_tiny_pixel(tmp_path / "v", prediction_type="v_prediction")))
    x_t, t = images(2, seed=2), torch.tensor([10, 80])
    with torch.no_grad():
        v = a.denoiser(x_t, t).sample
        abar = a.alphas_cumprod[t].view(-1, 1, 1, 1)
        torch.testing.assert_close(a.eps_prediction(x_t, t, None), abar.sqrt() * v + (1 - abar).sqrt() * x_t,
                                   rtol=1e-4, atol=1e-5)


def test_scorer_refuses_a_model_it_cannot_handle(tmp_path, pixel):
    flow = load_adapter(str(build_tiny_sd3(tmp_path / "sd3")))
    # Refused when built, before any image is read.
    with pytest.raises(ScorerError, match="noise schedule"):
        PIAScorer(flow)
    with pytest.raises(ScorerError, match="noise schedule"):
        build_scorer("secmi:t_sec=50", flow)
    with pytest.raises(ScorerError, match="no option"):
        build_scorer("loss:tt=5", flow)
    with pytest.raises(ScorerError, match="unknown scorer"):
        build_scorer("lossy", flow)
    d = build_scorer("loss:t=7", pixel).to_json()
    assert d == {"name": "loss", "higher_is_better": False, "t": 7, "n_draws": 4}


def test_secmi_denoising_step_is_ddim_and_the_score_is_its_round_trip(pixel):
    from diffusers import DDIMScheduler

    from invmm.scorers import SecMIScorer
    from invmm.scorers.secmi import ddim_transfer

    x = images(2, seed=3)
    # Denoising 60 -> 50 equals diffusers' DDIM step with 10 inference steps (stride 10 on 100 timesteps).
    sched = DDIMScheduler.from_config(pixel.scheduler_config, clip_sample=False)
    sched.set_timesteps(10)
    with torch.no_grad():
        out = pixel.denoiser(x, torch.full((2,), 60)).sample
        ref = sched.step(out, 60, x).prev_sample
        torch.testing.assert_close(ddim_transfer(pixel, x, 60, 50, None), ref, rtol=1e-4, atol=1e-5)
    # The score against the authors' secmia.py procedure, re-typed from it: their schedule in float64 from the
    # betas, the clean image as x at t = 0, DDIM inversion over range(0, t_sec, k)[1:], the round trip
    # t_sec - k -> t_sec -> t_sec - k, the summed squared difference at t_sec - k.
    got = SecMIScorer(pixel, t_sec=50, stride=10).score(x, ["a", "b"])
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)  # the tiny model's linear schedule
    alphas = torch.cumprod(1 - betas, dim=0)

    def singlestep(x, t_c, t_target):
        a_c, a_t = alphas[t_c].float(), alphas[t_target].float()
        eps = pixel.denoiser(x, torch.full((len(x),), t_c)).sample
        return a_t.sqrt() * (x - (1 - a_c).sqrt() * eps) / a_c.sqrt() + (1 - a_t).sqrt() * eps

    with torch.no_grad():
        target_steps = list(range(0, 50, 10))[1:]
        assert target_steps == [10, 20, 30, 40]
        y, t_c = x, 0
        for t in target_steps:
            y, t_c = singlestep(y, t_c, t), t
        recon = singlestep(singlestep(y, 40, 50), 50, 40)
    torch.testing.assert_close(torch.tensor(got), ((y - recon) ** 2).flatten(1).sum(-1), rtol=1e-4, atol=1e-7)


def test_generate_compare_finds_the_toy_models_duplicated_digit(toy_model, tmp_path):
    from invmm.data.images import ImageItem, load_image
    from invmm.scorers import GenerateCompareScorer
    from invmm.similarity import PixelSimilarity
    from invmm.zoo.digits import export_images, load_manifest

    adapter = load_adapter(str(toy_model))
    ids = ["digit-1742", "digit-1032"]  # 64 copies; held out
    paths = export_images(load_manifest(toy_model), tmp_path, ids=ids)
    x = torch.stack([load_image(ImageItem(id=p.stem, path=str(p)), mode="L", size=8).pixels for p in paths])
    scorer = GenerateCompareScorer(adapter, n_samples=64, sampler_steps=50)
    got = scorer.score(x, ids, seed=0)
    # Reference: the same samples, compared by hand.
    samples = scorer.samples(None, 0)
    ref = [PixelSimilarity()(samples, x[i]).max().item() for i in range(2)]
    assert got == pytest.approx(ref)
    assert got[0] >= 0.985 > got[1]  # the duplicated digit is regenerated, the held-out one is not
    assert scorer.higher_is_better


def test_noise_norm_first_step_matches_two_unet_calls(tmp_path, pixel):
    from diffusers import DDIMScheduler

    from invmm.scorers import NoiseNormScorer
    from invmm.zoo.tiny import build_tiny_sd

    sd = load_adapter(str(build_tiny_sd(tmp_path / "sd")))
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    scorer = NoiseNormScorer(sd, n_generations=3, n_steps=1, sampler_steps=10)
    (got,) = scorer.score(x0, ["img"], captions=["a cat"], seed=2)
    g = torch.Generator().manual_seed(seed_from(2, "noise_norm", "img"))
    x = torch.randn((3, 4, 8, 8), generator=g)
    sched = DDIMScheduler.from_config(sd.scheduler_config)
    sched.set_timesteps(10)
    t = sched.timesteps[0].expand(3)
    with torch.no_grad():
        c = sd.denoiser(x, t, encoder_hidden_states=sd.prompt_embeddings(["a cat"]).expand(3, -1, -1)).sample
        u = sd.denoiser(x, t, encoder_hidden_states=sd.prompt_embeddings([""]).expand(3, -1, -1)).sample
    assert got == pytest.approx((c - u).flatten(1).norm(dim=1).mean().item(), rel=1e-4)
    with pytest.raises(ScorerError, match="text conditioning"):
        NoiseNormScorer(pixel)


@pytest.mark.slow
def test_invmm_scorer_equals_measure_and_orders_memorized_first(toy_model, tmp_path):
    from invmm.config import preset
    from invmm.data.images import ImageItem, load_image
    from invmm.runs.measure import measure
    from invmm.zoo.digits import export_images, load_manifest

    adapter = load_adapter(str(toy_model))
    ids = ["digit-1742", "digit-1032"]  # 64 copies; held out
    paths = export_images(load_manifest(toy_model), tmp_path, ids=ids)
    x = torch.stack([load_image(ImageItem(id=p.name, path=str(p)), mode="L", size=8).pixels for p in paths])
    cfg = preset("ddpm", similarity="pixel", max_steps=150, sampler_steps=50, seed=5, map_samples=0)
    base = preset("ddpm", similarity="pixel")
    scorer = build_scorer("invmm:max_steps=150,sampler_steps=50,map_samples=0", adapter, invmm_config=base)
    # Seed 5, not the config's 0, so that the seed is seen passed through; with it the duplicated digit is
    # reproduced at step 100 (with some seeds only at 300: the spread issue 23 measures).
    got = scorer.score(x, [p.name for p in paths], seed=5)
    ref = {r.id: r.score for r in measure(adapter, [str(p) for p in paths], cfg)}
    assert all(close(a, ref[p.name]) for a, p in zip(got, paths))  # other batch mates: same_results' tolerance
    assert got[0] < float("inf") == got[1]  # the duplicated digit is reproduced, the held-out one is not
    assert not scorer.higher_is_better
    assert scorer.to_json()["config"]["max_steps"] == 150


def test_secmi_inversion_step_is_diffusers_ddim_inverse_step(pixel):
    from diffusers import DDIMInverseScheduler

    from invmm.scorers.secmi import ddim_transfer

    x = images(2, seed=6)
    inv = DDIMInverseScheduler.from_config(pixel.scheduler_config, clip_sample=False)
    inv.set_timesteps(10)  # stride 10 on the 100 training timesteps: a step at t goes from t - 10 to t
    with torch.no_grad():
        eps = pixel.denoiser(x, torch.full((2,), 10)).sample  # the model at the step's start, as SecMI does
        ref = inv.step(eps, 20, x).prev_sample
        torch.testing.assert_close(ddim_transfer(pixel, x, 10, 20, None), ref, rtol=1e-4, atol=1e-5)


def test_scorer_specs_split_and_parse():
    from invmm.scorers import parse_spec

    assert split_specs("invmm,loss") == ["invmm", "loss"]
    assert split_specs("loss;pia:t=100,p=2;invmm") == ["loss", "pia:t=100,p=2", "invmm"]
    assert split_specs("invmm,pia:t=100") == ["invmm", "pia:t=100"]
    assert parse_spec("pia:t=100,p=2") == ("pia", {"t": 100, "p": 2})
    assert parse_spec("invmm:similarity=pixel") == ("invmm", {"similarity": "pixel"})


def test_timesteps_outside_the_schedule_are_refused_at_construction(pixel):
    from invmm.scorers import SecMIScorer

    # The tiny model has 100 training timesteps.
    with pytest.raises(ScorerError, match=r"scorer 'loss': t=1500 is outside the model's 0\.\.99 timesteps"):
        LossScorer(pixel, t=1500)
    with pytest.raises(ScorerError, match=r"t=100 is outside the model's 0\.\.99 timesteps"):
        build_scorer("loss", pixel)  # the default t=100 needs a longer schedule
    with pytest.raises(ScorerError, match=r"scorer 'pia': t=-1 is outside"):
        PIAScorer(pixel, t=-1)
    with pytest.raises(ScorerError, match="not a whole timestep"):
        build_scorer("pia:t=2.5", pixel)
    with pytest.raises(ScorerError, match=r"t_sec=1500 is outside"):
        SecMIScorer(pixel, t_sec=1500)
    with pytest.raises(ScorerError, match=r"t_sec=100 is outside the model's 0\.\.99 timesteps"):
        SecMIScorer(pixel, t_sec=100, stride=10)  # the round trip's top is t_sec itself
    with pytest.raises(ScorerError, match="divisor"):
        SecMIScorer(pixel, t_sec=50, stride=20)  # the round trip would top out at 60, not t_sec
    with pytest.raises(ScorerError, match="at most half"):
        SecMIScorer(pixel, t_sec=10, stride=10)  # no inversion step before the round trip
    with pytest.raises(ScorerError, match="divisor"):
        SecMIScorer(pixel, t_sec=50, stride=0)
    assert SecMIScorer(pixel, t_sec=90, stride=10).t_sec == 90
    assert PIAScorer(pixel, t=99).t == 99 and LossScorer(pixel, t=0).t == 0
