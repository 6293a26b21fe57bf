"""Caption-level detectors (anisotropy: Asthana & Belagiannis 2026; sharpness: Jeon et al. 2025) against hand
computations with the raw diffusers UNet, scheduler and text encoder, and the caption-only `invmm evaluate`."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image
from typer.testing import CliRunner

from invmm.cli import app
from invmm.data.datasets import load_dataset
from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.functional import seed_from
from invmm.runs.scores import read_scores
from invmm.scorers import AnisotropyScorer, ScorerError, SharpnessScorer, build_scorer
from invmm.scorers.sharpness import score_hvp
from invmm.zoo.tiny import build_tiny_pixel, build_tiny_sd, build_tiny_sd3

runner = CliRunner()
CAPTIONS = ["a cat", "a dog on a mat", "a red car"]


@pytest.fixture(scope="module")
def sd_path(tiny_family):
    return tiny_family("sd")


@pytest.fixture(scope="module")
def sd(sd_path):
    return load_adapter(str(sd_path))


def embed(adapter, texts):
    """Stable Diffusion's encode_prompt: max-length padding, the text encoder's last hidden state."""
    tok = adapter.tokenizers[0]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return adapter.text_encoders[0](ids)[0]


def first_noise(name, seed, n, shape):
    g = torch.Generator().manual_seed(seed_from(seed, name))
    return torch.randn((n, *shape), generator=g)


def ddim_timesteps(config, steps):
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    return sched


def test_anisotropy_matches_two_raw_unet_passes_on_pure_noise(sd):
    scorer = AnisotropyScorer(sd, n_generations=2)
    grid = ddim_timesteps(sd.scheduler_config, 50).timesteps
    assert (scorer.t_norm, scorer.t_angle) == (int(grid[0]), int(grid[-3])) == (98, 4)
    got = scorer.score_captions(CAPTIONS[:2], ["a", "b"], seed=3)
    x = first_noise("anisotropy", 3, 2, (4, 8, 8))
    u = embed(sd, [""]).expand(2, -1, -1)
    for caption, value, image_id in zip(CAPTIONS, got, ["a", "b"]):
        c = embed(sd, [caption]).expand(2, -1, -1)
        with torch.no_grad():
            def eps(t, e):
                return sd.denoiser(x, torch.full((2,), t), encoder_hidden_states=e).sample
            norm = (eps(98, c) - eps(98, u)).flatten(1).norm(dim=1).mean()
            a, b = eps(4, u), eps(4, c) - eps(4, u)
            per_position = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # cosine over the 4 channels
            flat = (a * b).flatten(1).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1))
        cosine = per_position.mean(dim=(1, 2)).mean()
        assert value == pytest.approx(norm.item() + 2.0 * cosine.item(), rel=1e-4, abs=1e-6)
        assert scorer.pop_details(image_id) == pytest.approx({"norm": norm.item(), "cosine": cosine.item()},
                                                             rel=1e-4, abs=1e-6)
        (flat_score,) = AnisotropyScorer(sd, n_generations=2, cosine_over="all", norm_weight=0.5,
                                         angle_weight=1).score_captions([caption], ["x"], seed=3)
        assert flat_score == pytest.approx(0.5 * norm.item() + flat.mean().item(), rel=1e-4, abs=1e-6)


def test_anisotropy_on_a_v_prediction_model_takes_the_raw_v_as_the_authors(tmp_path):
    """SD 2 in the authors' code: the cosine of the raw v's, cos(v_u, v_c - v_u); the norm of their score
    difference, sqrt(abar) ||v_c - v_u|| / (1 - abar) (= ||eps_c - eps_u|| / (1 - abar))."""
    adapter = load_adapter(str(build_tiny_sd(tmp_path / "v", prediction_type="v_prediction")))
    scorer = AnisotropyScorer(adapter, t_norm=60, t_angle=10, angle_weight=0.1)
    (got,) = scorer.score_captions(["a cat"], ["i"])
    x = first_noise("anisotropy", 0, 1, (4, 8, 8))
    abar = DDIMScheduler.from_config(adapter.scheduler_config).alphas_cumprod[60]
    with torch.no_grad():
        def v(t, p):
            return adapter.denoiser(x, torch.tensor([t]), encoder_hidden_states=embed(adapter, [p])).sample
        norm = (abar.sqrt() * (v(60, "a cat") - v(60, ""))).norm().item() / (1 - abar.item())
        a, b = v(10, ""), v(10, "a cat") - v(10, "")
        cosine = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()
    assert scorer.pop_details("i") == pytest.approx({"norm": norm, "cosine": cosine}, rel=1e-4, abs=1e-6)
    assert got == pytest.approx(norm + 0.1 * cosine, rel=1e-4, abs=1e-6)
    # Not the cosine of the eps converted from them (eps = sqrt(abar) v + sqrt(1 - abar) x): they differ.
    abar10 = DDIMScheduler.from_config(adapter.scheduler_config).alphas_cumprod[10]
    eu, ec = abar10.sqrt() * a + (1 - abar10).sqrt() * x, abar10.sqrt() * (a + b) + (1 - abar10).sqrt() * x
    converted = ((eu * (ec - eu)).sum(1) / (eu.norm(dim=1) * (ec - eu).norm(dim=1))).mean().item()
    assert abs(converted - cosine) > 1e-3


def test_score_hvp_is_the_hessian_vector_product_of_the_log_density():
    """For a true score s = grad log p, the JVP of s is the HVP of log p (torch.autograd.functional.hvp)."""
    g = torch.Generator().manual_seed(0)
    means, x, v = torch.randn(3, 6, generator=g, dtype=torch.float64), \
        torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)

    def log_p(z):  # a 3-component Gaussian mixture with unit covariances: a curved, non-quadratic log-density
        return torch.logsumexp(-0.5 * ((z - means) ** 2).sum(-1), dim=0)

    score, hv = score_hvp(torch.func.grad(log_p), x, v)
    _, ref = torch.autograd.functional.hvp(log_p, x, v)
    torch.testing.assert_close(hv, ref)
    torch.testing.assert_close(score, torch.autograd.grad(log_p(x.requires_grad_()), x)[0])


@pytest.mark.parametrize("n_steps", [1, 2])
def test_sharpness_matches_a_finite_difference_hessian_vector_product(sd, sd_path, n_steps):
    """||(H_c - H_u) s_delta|| with H v by central differences of the raw UNet's score in float64."""
    scorer = SharpnessScorer(sd, n_generations=2, n_steps=n_steps, sampler_steps=10, guidance=3.0)
    (got,) = scorer.score_captions(["a cat"], ["i"], seed=1)
    details = scorer.pop_details("i")

    unet = UNet2DConditionModel.from_pretrained(sd_path / "unet").double().eval()
    sched = ddim_timesteps(sd.scheduler_config, 10)
    pair = torch.cat([embed(sd, [""]).expand(2, -1, -1), embed(sd, ["a cat"]).expand(2, -1, -1)]).double()
    x = first_noise("sharpness", 1, 2, (4, 8, 8)).double()
    values, norms = [], []
    for t in sched.timesteps[:n_steps]:
        sigma = (1 - sched.alphas_cumprod[t].double()).sqrt()

        def s(z, t=t, sigma=sigma):
            with torch.no_grad():
                return (-unet(torch.cat([z, z]), t, encoder_hidden_states=pair).sample / sigma).chunk(2)

        s_u, s_c = s(x)
        delta, h = s_c - s_u, 1e-4
        (up_u, up_c), (down_u, down_c) = s(x + h * delta), s(x - h * delta)
        hv = ((up_c - down_c) - (up_u - down_u)) / (2 * h)
        values.append(hv.flatten(1).norm(dim=1).mean().item())
        norms.append(delta.flatten(1).norm(dim=1).mean().item())
        e_u, e_c = -sigma * s_u, -sigma * s_c  # the guided DDIM step to the next timestep
        x = sched.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
    assert got == pytest.approx(float(np.mean(values)), rel=1e-4)
    assert details["score_diff_norm"] == pytest.approx(float(np.mean(norms)), rel=1e-4)


def test_deterministic_and_a_function_of_the_caption_alone(sd):
    for cls in (AnisotropyScorer, SharpnessScorer):
        scorer = cls(sd, n_generations=2)
        first = scorer.score_captions(CAPTIONS, ["a", "b", "c"], seed=7)
        # Same seed: the same numbers, whatever the order or the ids (the noise is shared by every caption).
        assert cls(sd, n_generations=2).score_captions(CAPTIONS[::-1], ["x", "y", "z"], seed=7) == first[::-1]
        assert scorer.score(None, ["k"], ["a cat"], seed=7) == first[:1]  # the image interface ignores pixels
        assert cls(sd, n_generations=2).score_captions(CAPTIONS, ["a", "b", "c"], seed=8) != first
        assert all(math.isfinite(v) for v in first) and len(set(first)) == 3


def test_refusals(tmp_path, sd):
    pixel = load_adapter(str(build_tiny_pixel(tmp_path / "p")))
    flow = load_adapter(str(build_tiny_sd3(tmp_path / "f")))
    for name in ("anisotropy", "sharpness"):
        with pytest.raises(ScorerError, match="text conditioning"):
            build_scorer(name, pixel)
        with pytest.raises(ScorerError, match="noise schedule"):
            build_scorer(name, flow)
        with pytest.raises(ScorerError, match="n_generations"):
            build_scorer(f"{name}:n_generations=0", sd)
        with pytest.raises(ScorerError, match="sampler_steps"):
            build_scorer(f"{name}:sampler_steps=101", sd)
        with pytest.raises(ScorerError, match="has none"):
            build_scorer(name, sd).score_captions(["a cat", None], ["a", "b"])
    with pytest.raises(ScorerError, match=r"t_norm=100 .*0\.\.99"):
        build_scorer("anisotropy:t_norm=100", sd)
    with pytest.raises(ScorerError, match="t_angle"):
        build_scorer("anisotropy:t_angle=-1", sd)
    with pytest.raises(ScorerError, match="cosine_over"):
        build_scorer("anisotropy:cosine_over=pixels", sd)
    with pytest.raises(ScorerError, match="n_steps"):
        build_scorer("sharpness:n_steps=11,sampler_steps=10", sd)
    assert not AnisotropyScorer.needs_image and not SharpnessScorer.needs_image
    assert AnisotropyScorer.higher_is_better and SharpnessScorer.higher_is_better


def test_caption_manifests(tmp_path):
    (tmp_path / "c.csv").write_text("caption,label\na cat,member\na dog,nonmember\n")
    items = load_dataset(tmp_path / "c.csv", labelled=True, captions_only_ok=True)
    assert [(it.id, it.path, it.caption, it.label, it.error) for it in items] == [
        ("1", "", "a cat", "member", None), ("2", "", "a dog", "nonmember", None)]
    with pytest.raises(InvMMInputError, match="'path' column"):  # images are required unless asked otherwise
        load_dataset(tmp_path / "c.csv", labelled=True)
    (tmp_path / "i.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"caption": "a cat", "label": "m", "id": "cat"}, {"caption": "", "label": "n"}]))
    with pytest.raises(InvMMInputError, match="row 2 has neither an image 'path' nor a 'caption'"):
        load_dataset(tmp_path / "i.jsonl", captions_only_ok=True)


def write_captions(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(rows[0]))
        w.writerows([list(r.values()) for r in rows])
    return path


def test_evaluate_scores_a_caption_only_manifest(tmp_path, sd, sd_path):
    data = write_captions(tmp_path / "captions.csv", [
        {"caption": c, "label": lab, "id": i}
        for c, lab, i in [("a cat", "member", "p1"), ("a dog on a mat", "member", ""), ("a red car", "heldout", ""),
                          ("a blue boat", "heldout", "q")]])
    run = tmp_path / "run"
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(sd_path), "--data", str(data), "--scorers",
                              "anisotropy;sharpness:n_generations=2", "--positive", "member", "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    records = read_scores(run)
    assert sorted((r.scorer, r.id) for r in records) == sorted(
        (s, i) for s in ("anisotropy", "sharpness") for i in ("p1", "2", "3", "q"))
    assert all(r.status == "ok" and r.path == "" and r.caption and r.seconds is not None for r in records)
    mine = {(r.scorer, r.id): r for r in records}
    ref = AnisotropyScorer(sd).score_captions(["a cat", "a red car"], ["p1", "3"])
    assert [mine["anisotropy", "p1"].score, mine["anisotropy", "3"].score] == pytest.approx(ref, rel=1e-6)
    assert set(mine["anisotropy", "q"].details) == {"norm", "cosine"}
    assert set(mine["sharpness", "q"].details) == {"score_diff_norm"}
    rows = {r["scorer"]: r for r in csv.DictReader(open(run / "evaluation" / "member-vs-heldout" / "summary.csv"))}
    assert set(rows) == {"anisotropy", "sharpness"} and rows["anisotropy"]["direction"] == "higher"


def test_evaluate_refuses_an_image_scorer_on_a_caption_only_manifest(tmp_path, sd_path):
    data = write_captions(tmp_path / "caps.csv", [{"caption": "a cat", "label": "member"},
                                                   {"caption": "a dog", "label": "heldout"}])
    run = tmp_path / "run"
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(sd_path), "--data", str(data), "--scorers",
                              "anisotropy,loss", "--positive", "member"])
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "caps.csv" in out and "no image 'path'" in out and "loss" in out
    assert "request only scorers that score captions" in out and "sharpness" in out
    assert not run.exists()
    # A folder of images has no captions for the caption-level scorers; a misspelt scorer is named.
    (tmp_path / "imgs" / "member").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "member" / "a.png")
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(sd_path), "--data", str(tmp_path / "imgs"),
                              "--scorers", "sharpness"])
    assert res.exit_code == 2 and "'caption' column" in " ".join(res.output.split())
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(sd_path), "--data", str(data),
                              "--scorers", "anisotropi"])
    assert res.exit_code == 2 and "unknown scorer 'anisotropi'" in res.output


def test_evaluate_mixed_manifest_decodes_images_only_for_image_scorers(tmp_path, sd_path, monkeypatch):
    import invmm.runs.scores

    rng = np.random.default_rng(0)
    rows = []
    for i, (caption, label) in enumerate([("a cat", "member"), ("a dog", "member"), ("a car", "heldout")]):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": caption, "label": label})
    rows.append({"path": "missing.png", "caption": "a boat", "label": "heldout"})  # no file: loss cannot score it
    rows.append({"path": "", "caption": "a hat", "label": "heldout"})  # no image at all: refused with loss
    data = write_captions(tmp_path / "mixed.csv", rows)
    decoded = []
    real = invmm.runs.scores.load_image
    monkeypatch.setattr(invmm.runs.scores, "load_image", lambda it, **kw: decoded.append(it.id) or real(it, **kw))
    args = ["evaluate", str(tmp_path / "run"), "--model", str(sd_path), "--data", str(data), "--positive", "member",
            "--bootstrap", "20"]
    res = runner.invoke(app, args + ["--scorers", "anisotropy;loss:t=50,n_draws=1"])
    assert res.exit_code == 2 and "1 of 5 row(s) have no image 'path' (first: 5)" in " ".join(res.output.split())

    data = write_captions(tmp_path / "mixed.csv", rows[:-1])
    res = runner.invoke(app, args + ["--scorers", "anisotropy;loss:t=50,n_draws=1"])
    assert res.exit_code == 0, res.output
    mine = {(r.scorer, r.id): r for r in read_scores(tmp_path / "run")}
    assert len(mine) == 8 and sorted(decoded) == ["0.png", "1.png", "2.png", "missing.png"]  # loss's only
    assert mine["loss", "missing.png"].status == "error" and mine["anisotropy", "missing.png"].status == "ok"
    assert mine["anisotropy", "0.png"].path.endswith("0.png")
    decoded.clear()
    res = runner.invoke(app, args + ["--scorers", "sharpness:n_generations=1"])  # added to the same run
    assert res.exit_code == 0, res.output
    assert decoded == []
    assert len(read_scores(tmp_path / "run")) == 12


def test_shipped_toy_captions_score_finite():
    from invmm.zoo import shipped_digits_t2i_model
    from invmm.zoo.digits_t2i import caption_for

    toy = load_adapter(str(shipped_digits_t2i_model()))
    captions = [caption_for(d) for d in range(10)]
    for scorer in (AnisotropyScorer(toy), SharpnessScorer(toy, n_generations=2)):
        values = scorer.score_captions(captions, captions)
        assert all(math.isfinite(v) for v in values) and len(set(values)) == 10
