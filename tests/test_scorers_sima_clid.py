import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from invmm.families import load_adapter
from invmm.functional import seed_from
from invmm.scorers import CLiDScorer, ScorerError, SimAScorer, build_scorer
from invmm.scorers.clid import caption_thirds, clid_timesteps, cut_count, degrade_caption
from invmm.zoo.tiny import build_tiny_ldm, build_tiny_pixel, build_tiny_sd

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    return load_adapter(str(build_tiny_pixel(tmp_path_factory.mktemp("p") / "m")))


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return load_adapter(str(build_tiny_sd(tmp_path_factory.mktemp("sd") / "m")))


def images(n, channels=1, size=8, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def raw_text(sd, texts):
    """Caption embeddings straight from the pipeline's tokenizer and CLIP encoder."""
    ids = sd.tokenizers[0](texts, padding="max_length", max_length=sd.tokenizers[0].model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    return sd.text_encoders[0](ids)[0]


def raw_latents(sd, x):
    return sd.vae.encode(x).latent_dist.mode() * sd.vae.config.scaling_factor


# --- SimA -----------------------------------------------------------------------------------------------------

def sima_reference(eps_at_x0: torch.Tensor) -> torch.Tensor:
    """The authors' statistic, re-typed from their SimA.distance / __sima_call__: sum of |eps|^4 per image."""
    return (eps_at_x0.abs() ** 4).flatten(1).sum(dim=-1)


def test_sima_is_the_noise_prediction_norm_at_the_clean_image(pixel):
    x0, ids = images(3), ["a", "b", "c"]
    got = torch.tensor(SimAScorer(pixel, t=30).score(x0, ids))
    with torch.no_grad():
        eps = pixel.denoiser(x0, torch.full((3,), 30)).sample  # the clean image fed as x_t, one query
    torch.testing.assert_close(got, torch.linalg.vector_norm(eps.flatten(1), ord=4, dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got ** 4, sima_reference(eps), rtol=1e-4, atol=1e-7)  # same ranking as theirs
    l2 = SimAScorer(pixel, t=30, p=2).score(x0, ids)
    torch.testing.assert_close(torch.tensor(l2), eps.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7)
    assert SimAScorer(pixel, t=30).score(x0, ids, seed=9) == got.tolist()  # deterministic, no draw
    assert not SimAScorer.higher_is_better


def test_sima_on_a_v_prediction_model_uses_the_implied_noise(tmp_path):
    a = load_adapter(str(build_tiny_pixel(tmp_path / "v", prediction_type="v_prediction")))
    x0 = images(2, seed=1)
    got = torch.tensor(SimAScorer(a, t=40).score(x0, ["a", "b"]))
    abar = DDPMScheduler.from_config(a.scheduler_config).alphas_cumprod[40]
    with torch.no_grad():
        v = a.denoiser(x0, torch.full((2,), 40)).sample
    eps = abar.sqrt() * v + (1 - abar).sqrt() * x0
    torch.testing.assert_close(got, eps.flatten(1).norm(p=4, dim=1), rtol=1e-4, atol=1e-6)


def test_sima_text_to_image_takes_the_caption(sd):
    x = images(2, channels=3, size=16, seed=2)
    caps = ["a red cat", "two dogs"]
    got = torch.tensor(SimAScorer(sd, t=20).score(x, ["a", "b"], captions=caps))
    with torch.no_grad():
        eps = sd.denoiser(raw_latents(sd, x), torch.full((2,), 20), encoder_hidden_states=raw_text(sd, caps)).sample
    torch.testing.assert_close(got ** 4, sima_reference(eps), rtol=1e-4, atol=1e-8)
    other = SimAScorer(sd, t=20).score(x, ["a", "b"], captions=["", ""])
    assert other != got.tolist()  # the caption is the condition


def test_sima_monte_carlo_averages_predictions_over_noised_copies(pixel):
    x0, ids = images(2, seed=3), ["a", "b"]
    got = SimAScorer(pixel, t=25, n_draws=3).score(x0, ids, seed=4)
    sched = DDPMScheduler.from_config(pixel.scheduler_config)
    for i, image_id in enumerate(ids):
        noise = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(seed_from(4, "sima", image_id)))
        t = torch.full((3,), 25)
        with torch.no_grad():
            mean = pixel.denoiser(sched.add_noise(x0[i : i + 1].expand(3, -1, -1, -1), noise, t), t).sample.mean(0)
        assert got[i] == pytest.approx(mean.flatten().norm(p=4).item(), rel=1e-4)
    # Each image its own stream: scored alone or beside another, the same number.
    assert SimAScorer(pixel, t=25, n_draws=3).score(x0[1:], ["b"], seed=4) == pytest.approx(got[1:], rel=1e-6)
    assert SimAScorer(pixel, t=25, n_draws=3).score(x0, ids, seed=5) != got


def test_sima_runs_on_a_latent_model_and_refuses_bad_settings(tmp_path, pixel):
    ldm = load_adapter(str(build_tiny_ldm(tmp_path / "ldm")))
    s = SimAScorer(ldm, t=10).score(images(2, channels=3, size=16, seed=5), ["a", "b"])
    assert all(np.isfinite(s)) and all(v > 0 for v in s)
    with pytest.raises(ScorerError, match=r"t=1500 is outside the model's 0\.\.99 timesteps"):
        SimAScorer(pixel, t=1500)
    with pytest.raises(ScorerError, match=r"t=-1 is outside"):
        build_scorer("sima:t=-1", pixel)
    with pytest.raises(ScorerError, match="n_draws"):
        SimAScorer(pixel, t=10, n_draws=-2)
    assert build_scorer("sima:t=20,n_draws=2", pixel).to_json() == {
        "name": "sima", "higher_is_better": False, "t": 20, "p": 4.0, "n_draws": 2}


# --- CLiD -----------------------------------------------------------------------------------------------------

def replace_words_top_rate(words: list[str], weights: list[float], cut_rate: float) -> str:
    """The authors' importance clipping, re-typed: every word weighing at least the weight ranked
    int(cut_rate * n - 0.01) (descending) becomes the end-of-text token."""
    threshold = sorted(weights, reverse=True)[int(cut_rate * len(weights) - 0.01)]
    return " ".join(EOT if w >= threshold else word for word, w in zip(words, weights))


def construct_t_array(t_mid, even_num, max_n_samples):
    """The authors' timestep list, re-typed from mia_CLiD_impt.py."""
    array, count = [], 0
    while len(array) < max_n_samples:
        array.append(t_mid + count * even_num)
        if len(array) < max_n_samples:
            array.insert(0, t_mid - (count + 1) * even_num)
        count += 1
    return array


def test_degradation_replaces_the_top_ranked_words_as_the_authors_rule_does():
    caption = "a photo of a red cat on the sofa"
    words = caption.split()
    g = torch.Generator().manual_seed(123)
    got = degrade_caption(caption, (0.3, 0.5, 0.7), g, EOT)
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(123)).tolist()
    weights = [0.0] * len(words)
    for rank, i in enumerate(order):  # the random ranking as importance weights, first = most important
        weights[i] = float(len(words) - rank)
    assert got == [replace_words_top_rate(words, weights, r) for r in (0.3, 0.5, 0.7)]
    cut = [{i for i, w in enumerate(c.split()) if w == EOT} for c in got]
    assert [len(c) for c in cut] == [3, 5, 7] == [cut_count(r, 9) for r in (0.3, 0.5, 0.7)]
    assert cut[0] < cut[1] < cut[2]  # nested, as an importance ranking's cuts are
    for c in got:  # the kept words stay, in place
        assert all(w in (EOT, words[i]) for i, w in enumerate(c.split()))
    # Short captions: 30% of 3 words is one word, 70% all three; "" as the mask drops the words.
    assert [cut_count(r, 3) for r in (0.3, 0.5, 0.7)] == [1, 2, 3]
    dropped = degrade_caption("a handwritten seven", (0.3,), torch.Generator().manual_seed(0), "")
    assert len(dropped[0].split()) == 2
    assert caption_thirds("abcdefghij") == ["abc", "def", "ghij"]  # mia_CLiD_clip.py's e[:len/3], ...
    for n in (1, 2, 3, 4, 5):
        assert clid_timesteps(450, 10, n) == sorted(construct_t_array(450, 10, n))
    assert clid_timesteps(450, 10, 3) == [440, 450, 460]


def test_degraded_captions_are_seeded_per_image(sd):
    s = CLiDScorer(sd, t_mid=50)
    one = s.degraded_captions("a photo of a red cat on the sofa", "img-1", seed=0)
    assert one == s.degraded_captions("a photo of a red cat on the sofa", "img-1", seed=0)
    assert one[-1] == "" and len(one) == 4  # three cut rates and the empty caption
    others = {tuple(s.degraded_captions("a photo of a red cat on the sofa", f"img-{k}", seed=0)) for k in range(8)}
    assert len(others) > 1  # each image its own ranking
    assert len({tuple(s.degraded_captions("a b c", "x", seed=k)) for k in range(8)}) > 1  # and each seed
    thirds = CLiDScorer(sd, t_mid=50, degrade="thirds", null=False)
    assert thirds.degraded_captions("abcdefghij", "x") == ["abc", "def", "ghij"]


def clid_reference(sd, latent, noise, ts, captions):
    """The authors' mi_mtcl_denoise core, re-typed: one noise per timestep, the same x_t for every caption,
    F.mse_loss(mean) per caption, minus the true caption's; CLiD_th's term is the mean of those differences."""
    sched = DDIMScheduler.from_config(sd.scheduler_config)
    x = sched.add_noise(latent.expand(len(ts), -1, -1, -1), noise, ts)
    losses = []
    for text in captions:
        emb = raw_text(sd, [text]).expand(len(ts), -1, -1)
        losses.append(F.mse_loss(sd.denoiser(x, ts, emb).sample, noise, reduction="mean").item())
    return losses[0], [v - losses[0] for v in losses[1:]]


def test_clid_matches_the_authors_loss_differences(sd):
    x = images(2, channels=3, size=16, seed=6)
    ids, caps = ["img-a", "img-b"], ["a red cat sitting on a mat", "two dogs in the snow"]
    scorer = CLiDScorer(sd, t_mid=50, t_interval=10, n_draws=3)
    got = scorer.score(x, ids, captions=caps, seed=3)
    rows = scorer.features(x, ids, captions=caps, seed=3)
    assert rows.shape == (2, 5)
    with torch.no_grad():
        latents = raw_latents(sd, x)
        for i, (image_id, caption) in enumerate(zip(ids, caps)):
            noise = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(seed_from(3, "clid", image_id)))
            texts = scorer.degraded_captions(caption, image_id, seed=3)
            assert texts[-1] == "" and all(EOT in t for t in texts[:3])
            loss, diffs = clid_reference(sd, latents[i : i + 1], noise, torch.tensor([40, 50, 60]), [caption] + texts)
            torch.testing.assert_close(rows[i], torch.tensor([loss] + diffs), rtol=1e-4, atol=1e-7)
            assert got[i] == pytest.approx(np.mean(diffs), abs=1e-6)  # float32 differences of losses near 1
    assert scorer.higher_is_better  # members' loss rises more when the caption is degraded


def test_clid_is_deterministic_with_independent_streams(sd):
    x = images(2, channels=3, size=16, seed=7)
    caps = ["a red cat sitting on a mat", "two dogs in the snow"]
    s = CLiDScorer(sd, t_mid=50)
    a = s.score(x, ["a", "b"], captions=caps, seed=1)
    assert s.score(x, ["a", "b"], captions=caps, seed=1) == a
    assert s.score(x[1:], ["b"], captions=caps[1:], seed=1) == pytest.approx(a[1:], abs=1e-6)  # batch-size rounding
    assert s.score(x, ["a", "b"], captions=caps, seed=2) != a
    same_image = s.score(x[:1].expand(2, -1, -1, -1), ["c", "d"], captions=[caps[0]] * 2, seed=1)
    assert same_image[0] != same_image[1]  # another id, another stream


def test_clid_refusals(sd, pixel):
    with pytest.raises(ScorerError, match="text conditioning"):
        CLiDScorer(pixel)
    with pytest.raises(ScorerError, match=r"t_mid=450 is outside the model's 0\.\.99 timesteps"):
        CLiDScorer(sd)  # the authors' 440..460 need a 1000-step schedule
    with pytest.raises(ScorerError, match=r"highest timestep=100 is outside"):
        CLiDScorer(sd, t_mid=90, n_draws=3)
    with pytest.raises(ScorerError, match="degrade"):
        CLiDScorer(sd, t_mid=50, degrade="importance")
    with pytest.raises(ScorerError, match="cut_rates"):
        CLiDScorer(sd, t_mid=50, cut_rates=(0.3, 1.5))
    assert build_scorer("clid:t_mid=50,cut_rates=0.2 0.4", sd).cut_rates == (0.2, 0.4)
    s = CLiDScorer(sd, t_mid=50)
    x = images(3, channels=3, size=16)
    with pytest.raises(ScorerError, match=r"'img-2', 'img-3' have no caption"):
        s.score(x, ["img-1", "img-2", "img-3"], captions=["a cat", None, "  "])
    with pytest.raises(ScorerError, match="'img-1'"):
        s.score(x[:1], ["img-1"])


# --- end to end -----------------------------------------------------------------------------------------------

def test_evaluate_sima_and_clid_on_the_toy_text_to_image_model(tmp_path):
    from invmm.cli import app
    from invmm.runs.scores import read_scores
    from invmm.zoo import shipped_digits_t2i_model
    from invmm.zoo.digits import export_images, load_manifest, select_images

    model = shipped_digits_t2i_model()
    manifest = load_manifest(model)
    chosen = select_images(manifest, {64: 2, 0: 2})
    paths = export_images(manifest, tmp_path / "images", ids=[e["id"] for e in chosen])
    by_id = {p.stem: p for p in paths}
    label = {e["id"]: "memorized" if e["copies"] else "heldout" for e in chosen}
    rows = [f"{by_id[e['id']]},{label[e['id']]},{e['id']},{e['caption']}\n" for e in chosen]
    (tmp_path / "data.csv").write_text("path,label,id,caption\n" + "".join(rows))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["evaluate", str(run), "--model", str(model), "--data", str(tmp_path / "data.csv"),
                                   "--scorers", "sima,clid", "--positive", "memorized", "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    records = read_scores(run)
    assert len(records) == 8 and all(r.status == "ok" and np.isfinite(r.score) for r in records)
    info = json.loads((run / "run.json").read_text())
    assert info["scorers"]["clid"]["cut_rates"] == [0.3, 0.5, 0.7] and info["scorers"]["sima"]["t"] == 100
    summary = {r["scorer"]: r for r in csv.DictReader(open(run / "evaluation" / "memorized-vs-heldout" /
                                                          "summary.csv"))}
    assert summary["sima"]["direction"] == "lower" and summary["clid"]["direction"] == "higher"
    for name, row in summary.items():
        mine = [r for r in records if r.scorer == name]
        sign = 1 if row["direction"] == "higher" else -1
        assert float(row["auc"]) == pytest.approx(roc_auc_score([r.label == "memorized" for r in mine],
                                                                [sign * r.score for r in mine]))
    assert float(summary["sima"]["auc"]) == 1.0  # the 64-copy digits sit on the training set
    # The run's scores are the scorers' own on the same pixels.
    from invmm.data.datasets import load_dataset
    from invmm.data.images import load_image

    items = [load_image(it, mode="L", size=8) for it in load_dataset(tmp_path / "data.csv", labelled=True)]
    adapter = load_adapter(str(model))
    x = torch.stack([it.pixels for it in items])
    direct = CLiDScorer(adapter).score(x, [it.id for it in items], [it.caption for it in items], seed=0)
    assert [r.score for r in sorted((r for r in records if r.scorer == "clid"), key=lambda r: r.id)] == \
        pytest.approx([s for _, s in sorted(zip([it.id for it in items], direct))], rel=1e-5)

    # An image without a caption cannot be scored by clid: a clear error naming it.
    (tmp_path / "nocap.csv").write_text("path,label,id,caption\n" + rows[0] + f"{by_id[chosen[2]['id']]},heldout,"
                                        "blank,\n")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run2"), "--model", str(model), "--data",
                                   str(tmp_path / "nocap.csv"), "--scorers", "clid", "--positive", "memorized"])
    assert res.exit_code == 2 and "'blank'" in res.output and "caption" in res.output
