import pytest
import torch
from diffusers import DDPMScheduler

from invmm.adapters.loading import load_adapter
from invmm.functional import seed_from
from invmm.scorers import LossScorer, PIAScorer, ScorerError
from invmm.scorers.base import eps_prediction
from invmm.zoo.tiny import build_tiny_pixel, build_tiny_sd3


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    return load_adapter(str(build_tiny_pixel(tmp_path_factory.mktemp("p") / "m")))


def images(n, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loss_matches_a_direct_computation(pixel):
    x0, ids = images(2), ["a", "b"]
    got = LossScorer(t=30, n_draws=3).score(pixel, x0, ids, seed=5)
    sched = DDPMScheduler.from_config(pixel.scheduler_config)
    for i, image_id in enumerate(ids):
        g = torch.Generator().manual_seed(seed_from(5, "loss", image_id))
        eps = torch.randn((3, 1, 8, 8), generator=g)
        t = torch.full((3,), 30)
        with torch.no_grad():
            pred = pixel.unet(sched.add_noise(x0[i : i + 1].expand(3, -1, -1, -1), eps, t), t).sample
        ref = (eps - pred).pow(2).flatten(1).sum(1).mean().item()
        assert got[i] == pytest.approx(ref, rel=1e-4)


def test_pia_matches_a_direct_two_call_computation(pixel):
    x0 = images(3, seed=1)
    got = PIAScorer(t=50).score(pixel, x0, ["a", "b", "c"])
    sched = DDPMScheduler.from_config(pixel.scheduler_config)
    with torch.no_grad():
        eps0 = pixel.unet(x0, torch.zeros(3, dtype=torch.long)).sample
        t = torch.full((3,), 50)
        pred = pixel.unet(sched.add_noise(x0, eps0, t), t).sample
    ref = torch.linalg.vector_norm((eps0 - pred).flatten(1), ord=4, dim=1)
    torch.testing.assert_close(torch.tensor(got), ref, rtol=1e-4, atol=1e-6)
    assert PIAScorer(t=50).score(pixel, x0, ["a", "b", "c"]) == got  # deterministic


def test_eps_from_v_prediction(tmp_path):
    a = load_adapter(str(build_tiny_pixel(tmp_path / "v", prediction_type="v_prediction")))
    x_t, t = images(2, seed=2), torch.tensor([10, 80])
    with torch.no_grad():
        v = a.unet(x_t, t).sample
        abar = a.alphas_cumprod[t].view(-1, 1, 1, 1)
        torch.testing.assert_close(eps_prediction(a, x_t, t, None), abar.sqrt() * v + (1 - abar).sqrt() * x_t,
                                   rtol=1e-4, atol=1e-5)


def test_scorer_refuses_a_model_it_cannot_handle(tmp_path):
    flow = load_adapter(str(build_tiny_sd3(tmp_path / "sd3")))
    with pytest.raises(ScorerError, match="noise schedule"):
        PIAScorer().score(flow, torch.zeros(1, 3, 16, 16), ["x"])
    d = LossScorer(t=7).to_json()
    assert d == {"name": "loss", "higher_is_better": False, "t": 7, "n_draws": 4}
