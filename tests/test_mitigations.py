"""Inference-time mitigations: each against a hand-written reference on the tiny Stable Diffusion pipeline, their
refusals where they have no meaning, and their record in run.json with resume."""


import json

import numpy as np
import pytest
import torch
from families import FAMILIES, real_schedule
from same_results import assert_close_tensors
from typer.testing import CliRunner

from invmm.cli import app
from invmm.families import build_tiny, load_adapter
from invmm.mitigations import MitigationError, build_mitigations, install
from invmm.mitigations.attention_scale import cross_attention_layers, end_position
from invmm.mitigations.random_tokens import insert_tokens

runner = CliRunner()
CAPTIONS = ["a red square", "a blue circle on a green field"]


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory):
    return build_tiny("sd", tmp_path_factory.mktemp("mitigate") / "sd", **real_schedule("sd"))


def _inputs(adapter, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *adapter.latent_shape), generator=g)
    return noise, adapter.prompt_embeddings(CAPTIONS[:n])


def _mitigated(model, *specs):
    adapter = load_adapter(str(model))
    return install(adapter, build_mitigations(list(specs), adapter))


def _ddim(adapter, noise, steps, output):
    """A DDIM loop written out: `output(x, t, k)` is the model output at step k."""
    scheduler = adapter.sampler(steps, "model")
    x = noise.clone()
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(output(x, t.expand(len(x)), k), t, x).prev_sample
    return adapter.decode(x)


@torch.no_grad()
def test_settings_that_undo_a_mitigation_leave_generation_exactly_as_it_was(sd_model):
    base = load_adapter(str(sd_model))
    noise, cond = _inputs(base)
    plain = base.generate(noise, steps=4, cond=cond, guidance=[1.0, 3.0])
    for spec in ("embedding-noise:scale=0", "random-tokens:n=0", "prompt-adjust:steps=0",
                 "guidance-delay:t=1000", "none"):
        adapter = _mitigated(sd_model, spec)
        got = adapter.generate(noise, steps=4, cond=adapter.prompt_embeddings(CAPTIONS), guidance=[1.0, 3.0])
        assert_close_tensors(got, plain)  # the same computation: float noise at most (machines differ)


@torch.no_grad()
def test_static_guidance_delay_is_unconditional_before_the_transition_and_cfg_after(sd_model):
    adapter = _mitigated(sd_model, "guidance-delay")  # static, t = 500 of 1,000
    base = load_adapter(str(sd_model))
    noise, cond = _inputs(base)
    steps, scale = 5, 4.0
    timesteps = [int(t) for t in base.sampler(steps, "model").timesteps]
    assert any(t > 500 for t in timesteps) and any(t <= 500 for t in timesteps)

    def reference(x, t, k):
        u = base.guided_output(x, t, None, 1.0)
        c = base.guided_output(x, t, cond, 1.0)
        return u if int(t[0]) > 500 else u + scale * (c - u)

    want = _ddim(base, noise, steps, reference)
    got = adapter.generate(noise, steps=steps, cond=adapter.prompt_embeddings(CAPTIONS[:2]), guidance=scale)
    assert torch.allclose(got, want, atol=1e-4)  # CFG batched [u; c] vs two calls: float32 rounding only
    assert not torch.allclose(got, base.generate(noise, steps=steps, cond=cond, guidance=scale), atol=1e-3)


@torch.no_grad()
def test_dynamic_guidance_delay_is_conditional_until_the_guidance_norm_passes_a_minimum(sd_model):
    adapter = _mitigated(sd_model, "guidance-delay:mode=dynamic")
    base = load_adapter(str(sd_model))
    noise, cond = _inputs(base)
    steps, scales = 8, torch.tensor([2.0, 5.0])
    norms, switched = [], []

    def reference(x, t, k):
        u = base.guided_output(x, t, None, 1.0)
        c = base.guided_output(x, t, cond, 1.0)
        norms.append((c - u).flatten(1).norm(dim=1))
        on = torch.zeros(2, dtype=torch.bool) if not switched else switched[-1].clone()
        if k >= 2:  # the previous step's norm below both neighbours: guidance from here on
            on |= (norms[k - 1] < norms[k - 2]) & (norms[k - 1] < norms[k])
        switched.append(on)
        w = torch.where(on, scales, torch.ones(2)).view(-1, 1, 1, 1)
        return u + w * (c - u)

    want = _ddim(base, noise, steps, reference)
    got = adapter.generate(noise, steps=steps, cond=adapter.prompt_embeddings(CAPTIONS[:2]),
                           guidance=scales.tolist())
    assert torch.allclose(got, want, atol=1e-4)  # batched vs separate passes: float32 rounding


@torch.no_grad()
def test_embedding_noise_adds_lambda_gaussian_noise_to_both_embeddings_per_sample(sd_model):
    from invmm.functional import seed_from
    from invmm.mitigations import GenerationCall
    from invmm.mitigations.base import row_digest
    from invmm.mitigations.embedding_noise import EmbeddingNoise

    base = load_adapter(str(sd_model))
    noise, cond = _inputs(base)
    call = GenerationCall(base, noise, cond, 2.0, 2, "model", plain=base.guided_output, pair=base.guidance_pair)
    EmbeddingNoise(scale=0.5, seed=3).prepare(call)
    uncond = base.uncond_embeddings(2)
    for i in range(2):  # N(0, 1) x lambda from the documented stream: the seed, the name, the sample's own noise
        def draw(stream, row):
            g = torch.Generator().manual_seed(seed_from(3, "mitigation", stream, row_digest(row)))
            return torch.randn(cond.shape[1:], generator=g)

        assert torch.allclose(call.cond[i], cond[i] + 0.5 * draw("embedding-noise", noise[i]))
        assert torch.allclose(call.uncond[i], uncond[i] + 0.5 * draw("embedding-noise/uncond", noise[i]))
    # So a sample is mitigated the same way alone as in a pair, and the generation moves.
    adapter = _mitigated(sd_model, "embedding-noise:scale=0.5,seed=3")
    pair = adapter.generate(noise, steps=2, cond=adapter.prompt_embeddings(CAPTIONS[:2]), guidance=2.0)
    alone = adapter.generate(noise[1:], steps=2, cond=adapter.prompt_embeddings(CAPTIONS[1:2]), guidance=2.0)
    assert torch.allclose(alone, pair[1:], atol=1e-4)  # batch of 1 vs 2: float32 rounding
    assert not torch.allclose(pair, base.generate(noise, steps=2, cond=cond, guidance=2.0), atol=1e-3)


def test_random_tokens_insert_n_non_special_tokens_at_word_positions(sd_model):
    adapter = load_adapter(str(sd_model))
    tok = adapter.tokenizers[0]
    text = insert_tokens("a red square", 4, tok, torch.Generator().manual_seed(0))
    words = text.split(" ")
    assert len(words) == 3 + 4 and [w for w in words if w in ("a", "red", "square")][:3] == ["a", "red", "square"]
    assert text == insert_tokens("a red square", 4, tok, torch.Generator().manual_seed(0))
    ids = tok(text).input_ids
    assert not set(ids[1:-1]) & set(tok.all_special_ids)


@torch.no_grad()
def test_attention_scale_at_one_without_the_mask_equals_the_stock_processor(sd_model):
    base = load_adapter(str(sd_model))
    noise, cond = _inputs(base)
    want = base.generate(noise, steps=3, cond=cond, guidance=3.0)
    adapter = _mitigated(sd_model, "attention-scale:c=1,mask=false")
    got = adapter.generate(noise, steps=3, cond=adapter.prompt_embeddings(CAPTIONS[:2]), guidance=3.0)
    assert torch.allclose(got, want, atol=1e-4)  # our logits + softmax vs scaled_dot_product_attention
    masked = _mitigated(sd_model, "attention-scale")
    out = masked.generate(noise, steps=3, cond=masked.prompt_embeddings(CAPTIONS[:2]), guidance=3.0)
    assert not torch.allclose(out, want, atol=1e-3)
    assert all(type(m.processor).__name__ != "RescaledCrossAttention" for m in cross_attention_layers(masked.denoiser))


@torch.no_grad()
def test_attention_scale_masks_after_the_end_token_and_scales_the_start_token_of_conditional_rows(sd_model):
    from invmm.mitigations.attention_scale import RescaledCrossAttention

    adapter = load_adapter(str(sd_model))
    layer = cross_attention_layers(adapter.denoiser)[0]
    tok = adapter.tokenizers[0]
    cond = adapter.prompt_embeddings(CAPTIONS[:1])
    length = cond.shape[1]
    end = end_position(tok, CAPTIONS[0], length)
    assert end == len(tok(CAPTIONS[0]).input_ids) - 1
    states = torch.cat([adapter.uncond_embeddings(1), cond])
    hidden = torch.randn(2, 5, layer.to_q.in_features, generator=torch.Generator().manual_seed(1))
    probs = {}

    def rows(s):
        return torch.tensor([False, True]), torch.tensor([end_position(tok, "", length), end])

    proc = RescaledCrossAttention(rows, 2.0, True)
    real_softmax = torch.Tensor.softmax

    def capture(self, dim=-1):
        probs["p"] = real_softmax(self, dim=dim)
        probs["logits"] = self
        return probs["p"]

    torch.Tensor.softmax = capture
    try:
        proc(layer, hidden, states)
    finally:
        torch.Tensor.softmax = real_softmax
    p, logits = probs["p"], probs["logits"]
    assert torch.all(p[0, :, :, 2:] == 0) and torch.all(p[1, :, :, end + 1:] == 0)
    q = layer.head_to_batch_dim(layer.to_q(hidden))
    k = layer.head_to_batch_dim(layer.to_k(states))
    raw = (layer.scale * q @ k.transpose(-1, -2)).view(2, -1, 5, length)
    assert torch.allclose(logits[1, ..., 0], 2.0 * raw[1, ..., 0], atol=1e-5)  # conditional: the start token x C
    assert torch.allclose(logits[0, ..., 0], raw[0, ..., 0], atol=1e-5)  # unconditional: as it was


def test_prompt_adjust_lowers_the_text_conditional_noise_magnitude(sd_model):
    from invmm.mitigations import GenerationCall
    from invmm.mitigations.prompt_adjust import PromptAdjust

    adapter = load_adapter(str(sd_model))
    noise, cond = _inputs(adapter)
    call = GenerationCall(adapter, noise, cond, 1.0, 4, "model", plain=adapter.guided_output,
                          pair=adapter.guidance_pair)
    PromptAdjust(target=0.0, steps=5, lr=0.05).prepare(call)
    t = adapter.sampler(4, "model").timesteps[0].expand(2)
    with torch.no_grad():
        u = adapter.guided_output(noise, t, None, 1.0)

        def magnitude(c):
            return (adapter.guided_output(noise, t, c, 1.0) - u).flatten(1).norm(dim=1)

        before, after = magnitude(cond), magnitude(call.cond)
    assert torch.all(after < before) and torch.equal(call.cond[:, 0], cond[:, 0])  # the start token kept
    # A target every sample already meets: nothing moves.
    met = GenerationCall(adapter, noise, cond, 1.0, 4, "model", plain=adapter.guided_output,
                         pair=adapter.guidance_pair)
    PromptAdjust(target=1e9).prepare(met)
    assert torch.equal(met.cond, cond)


@pytest.mark.parametrize("name", ["ddpm", "dit", "sd3", "flux-dev"])
def test_a_mitigation_is_refused_where_it_has_no_meaning(tmp_path, name):
    model = build_tiny(name, tmp_path / name, **real_schedule(name))
    adapter = load_adapter(str(model))
    fam = FAMILIES[name][0].name
    expected = {
        "ddpm": {"guidance-delay": "unconditional model", "embedding-noise": "unconditional model"},
        "dit": {"random-tokens": "class-conditional model", "prompt-adjust": "class-conditional model"},
        "sd3": {"attention-scale": "no cross-attention layer"},
        "flux-dev": {"guidance-delay": "takes guidance 'embedded'", "prompt-adjust": "takes guidance 'embedded'",
                     "attention-scale": "no cross-attention layer"},
    }[name]
    for spec, why in expected.items():
        with pytest.raises(MitigationError, match=why):
            build_mitigations([spec], adapter)
    assert fam == adapter.family
    with pytest.raises(MitigationError, match="unknown mitigation 'guidance'"):
        build_mitigations(["guidance"], adapter)


def test_unknown_settings_and_values_are_said():
    from invmm.mitigations import parse_mitigation

    with pytest.raises(MitigationError, match="takes mode, t, before"):
        parse_mitigation("guidance-delay:delay=3")
    with pytest.raises(MitigationError, match="mode 'late'"):
        parse_mitigation("guidance-delay:mode=late")
    assert parse_mitigation("none") is None
    assert parse_mitigation("embedding-noise:scale=0.2").to_json() == {"name": "embedding-noise", "scale": 0.2,
                                                                        "seed": 0}


def test_a_mitigated_run_records_it_and_a_resume_under_another_is_refused(tmp_path, sd_model):
    from PIL import Image

    adapter = load_adapter(str(sd_model))
    side = adapter.image_size
    Image.new("RGB", (side, side), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "data.csv").write_text(f"path,caption\n{tmp_path / 'red.png'},a red square\n")
    fast = ["--max-steps", "2", "--check-every", "2", "--batch-size", "2", "--sampler-steps", "2", "--similarity",
            "pixel", "--map-samples", "0"]
    out = tmp_path / "run"
    cmd = ["audit", str(sd_model), str(tmp_path / "data.csv"), "--out", str(out), *fast]
    res = runner.invoke(app, [*cmd, "--mitigation", "guidance-delay:mode=dynamic", "--mitigation",
                              "embedding-noise:scale=0.2"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["mitigations"] == [{"name": "guidance-delay", "mode": "dynamic", "t": 500.0, "before": None},
                                            {"name": "embedding-noise", "scale": 0.2, "seed": 0}]
    res = runner.invoke(app, [*cmd, "--mitigation", "guidance-delay"])
    assert res.exit_code == 2 and "model settings mitigations: 'guidance-delay(before=None, mode=dynamic, t=500.0); " \
        "embedding-noise(scale=0.2, seed=0)' -> 'guidance-delay(before=None, mode=static, t=500.0)'" in res.output
    res = runner.invoke(app, [*cmd, "--mitigation", "guidance-delay:mode=dynamic", "--mitigation",
                              "embedding-noise:scale=0.2"])
    assert res.exit_code == 0 and "1 already done" in res.output, res.output
    res = runner.invoke(app, ["measure", str(sd_model), str(tmp_path / "red.png"), "--prompt", "a red square",
                              "--mitigation", "attention-scale:c=0", *fast])
    assert res.exit_code == 2 and "attention-scale c=0: must be > 0" in res.output


def test_mitigation_eval_gives_the_three_numbers_per_image_and_mitigation(tmp_path, sd_model):
    import csv

    from PIL import Image

    from invmm.functional import seed_from
    from invmm.similarity import build_similarity

    adapter = load_adapter(str(sd_model))
    side = adapter.image_size
    rows = ["path,id,caption"]
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (side, side), color).save(tmp_path / f"t{i}.png")
        rows.append(f"{tmp_path / f't{i}.png'},t{i},{CAPTIONS[i]}")
    (tmp_path / "triggers.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "others.csv").write_text("caption,id\na green tree,o0\na yellow sun,o1\n")
    fast = ["--max-steps", "2", "--check-every", "2", "--batch-size", "2", "--sampler-steps", "3", "--similarity",
            "pixel", "--map-samples", "0"]
    out = tmp_path / "eval"
    res = runner.invoke(app, ["mitigation-eval", str(sd_model), str(tmp_path / "triggers.csv"), "--others",
                              str(tmp_path / "others.csv"), "--out", str(out), "--mitigation", "embedding-noise",
                              "--mitigation", "guidance-delay", "--generations", "3", "--side-generations", "2",
                              "--modes", "known", *fast])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(open(out / "mitigation.csv")))
    assert [(r["id"], r["mitigation"]) for r in table] == [(i, m) for m in ("none", "embedding-noise",
                                                                           "guidance-delay") for i in ("t0", "t1")]
    assert all(r["adversarial_reproduced"] in ("True", "False") and r["inverted_reproduced"] == "" for r in table)
    # The plain numbers of `none`, recomputed here: 3 generations from the caption at guidance 7.5, same noise.
    sim = build_similarity("pixel")
    beta = json.loads((out / "mitigation.json").read_text())["settings"]["threshold"]
    for r in table[:2]:
        g = torch.Generator().manual_seed(seed_from(0, "mitigation-eval", "plain", r["id"]))
        noise = torch.randn((3, *adapter.latent_shape), generator=g)
        cond = adapter.prompt_embeddings([r["caption"]]).expand(3, -1, -1)
        with torch.no_grad():
            images = adapter.generate(noise, steps=3, cond=cond, guidance=7.5, schedule="paper")
        target = torch.tensor(np.asarray(Image.open(tmp_path / f"{r['id']}.png"), dtype=np.float32))
        target = (target.permute(2, 0, 1) / 127.5 - 1.0)
        sims = sorted((float(v) for v in sim(images, target)), reverse=True)
        assert float(r["plain_max_similarity"]) == pytest.approx(sims[0], abs=1e-5)
        assert float(r["plain_top3_mean"]) == pytest.approx(sum(sims) / 3, abs=1e-5)
        assert float(r["plain_share"]) == pytest.approx(sum(s >= beta for s in sims) / 3)
    effects = list(csv.DictReader(open(out / "side_effects.csv")))
    none = [e for e in effects if e["mitigation"] == "none"]
    assert len(effects) == 6 and all(float(e["mean_similarity"]) == pytest.approx(1.0) and
                                     float(e["share_changed"]) == 0 for e in none)
    noised = [e for e in effects if e["mitigation"] == "embedding-noise"]
    assert all(float(e["mean_similarity"]) < 1.0 for e in noised)
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [s["mitigation"] for s in summary] == ["none", "embedding-noise", "guidance-delay"]
    assert "plain re-triggered" in res.output and "guidance-delay" in res.output
    # The report: the summary and the per-image table, and an audit folder that `assess` gates on.
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    page = (out / "report" / "index.html").read_text()
    assert "Did the mitigation work?" in page and page.count("<tr>") == 1 + 3 + 1 + 6
    gate = runner.invoke(app, ["assess", str(out / "invmm" / "none" / "known"), "--max-rate", "0.5", "--json"])
    found = sum(r["adversarial_reproduced"] == "True" for r in table[:2])
    assert json.loads(gate.stdout)["census"]["reproduced"] == found and gate.exit_code == (1 if found > 1 else 0)
    # Resumed: the inversions are not run again.
    again = runner.invoke(app, ["mitigation-eval", str(sd_model), str(tmp_path / "triggers.csv"), "--out", str(out),
                                "--mitigation", "embedding-noise", "--mitigation", "guidance-delay", "--generations",
                                "3", "--modes", "known", *fast])
    assert again.exit_code == 0, again.output
    ledger = (out / "invmm" / "embedding-noise" / "known" / "results.jsonl").read_text().splitlines()
    assert len(ledger) == 2


def test_the_summary_counts_and_its_exact_interval_against_the_beta_quantiles():
    from scipy.stats import beta as beta_dist

    from invmm.analysis.mitigation_eval import exact_interval, plain_numbers, summarise

    assert plain_numbers([0.2, 0.99, 0.5, 0.986, 0.1], 0.985) == {
        "plain_max_similarity": 0.99, "plain_top3_mean": pytest.approx((0.99 + 0.986 + 0.5) / 3),
        "plain_share": 0.4}
    for k, n in ((0, 8), (3, 8), (8, 8)):  # Clopper-Pearson from the beta distribution's quantiles
        lo, hi = exact_interval(k, n)
        assert lo == pytest.approx(0.0 if k == 0 else beta_dist.ppf(0.025, k, n - k + 1), abs=1e-9)
        assert hi == pytest.approx(1.0 if k == n else beta_dist.ppf(0.975, k + 1, n - k), abs=1e-9)
    rows = [{"mitigation": m, "plain_max_similarity": p, "plain_share": s, "adversarial_reproduced": r,
             "adversarial_score": sc, "inverted_reproduced": None, "inverted_score": None}
            for m, p, s, r, sc in [("none", 0.99, 0.5, True, 0.3), ("none", 0.5, 0.0, False, float("inf")),
                                   ("x", 0.5, 0.0, True, 0.7), ("x", 0.4, 0.0, True, 0.9)]]
    side = [{"mitigation": "x", "mean_similarity": 0.8, "share_changed": 0.5}]
    none, x = summarise(rows, side, 0.985)
    assert (none["plain_retriggered"], none["adversarial_reproduced"], none["adversarial_n"]) == (1, 1, 2)
    assert (x["plain_retriggered"], x["adversarial_reproduced"], x["adversarial_median_score"]) == (0, 2, 0.8)
    assert none["inverted_n"] == 0 and x["side_share_changed"] == 0.5 and none["side_mean_similarity"] is None


@torch.no_grad()
def test_a_worker_rebuilds_the_mitigated_model_from_its_load_options(sd_model):
    """What a Ray worker does with families.load_options(adapter): the same mitigations, the same generation."""
    from invmm.families import load_options
    from invmm.mitigations import load_mitigated

    adapter = load_mitigated(str(sd_model), mitigations=["embedding-noise:scale=0.3", "guidance-delay"])
    worker = load_mitigated(str(sd_model), **load_options(adapter))
    assert worker.mitigations == adapter.mitigations and len(adapter.mitigations) == 2
    noise, _ = _inputs(adapter)
    a = adapter.generate(noise, steps=3, cond=adapter.prompt_embeddings(CAPTIONS), guidance=3.0)
    b = worker.generate(noise, steps=3, cond=worker.prompt_embeddings(CAPTIONS), guidance=3.0)
    assert_close_tensors(a, b)


def test_every_scorer_on_a_mitigated_model_scores_or_is_refused_naming_the_mitigation(tmp_path, sd_model):
    """The scorers that generate through adapter.generate (generate_compare, InvMM's check) score the mitigated
    model; those with their own sampler loops (noise_norm, anisotropy, sharpness) are refused rather than scoring it
    unmitigated; the others read the denoiser, which no inference-time mitigation changes."""
    from families import SMALL_SCORERS, images

    from invmm.scorers import SCORERS, ScorerError, build_scorer

    plain = load_adapter(str(sd_model))
    mitigated = _mitigated(sd_model, "embedding-noise:scale=0.5")
    x = images(plain, 2, seed=4)
    own_loop = {n for n, cls in SCORERS.items() if not cls.follows_mitigations}
    assert own_loop == {"noise_norm", "anisotropy", "sharpness"}
    for name, spec in SMALL_SCORERS.items():
        if name in own_loop:
            with pytest.raises(ScorerError, match=r"own sampler loop, which the mitigations \(embedding-noise\)"):
                build_scorer(spec, mitigated)
            continue
        scores = build_scorer(spec, mitigated).score(x, ["a", "b"], CAPTIONS[:2], seed=0)
        assert len(scores) == 2 and all(s == s for s in scores), name  # no NaN
        if name == "generate_compare":  # it generates: the mitigation changes its samples, so its score
            assert scores != build_scorer(spec, plain).score(x, ["a", "b"], CAPTIONS[:2], seed=0)
    (tmp_path / "d.csv").write_text("path,label,caption\n" + "".join(
        f"{_png(tmp_path, i, plain)},{lab},{CAPTIONS[0]}\n" for i, lab in enumerate(["member", "other"])))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e"), "--model", str(sd_model), "--data",
                              str(tmp_path / "d.csv"), "--scorers", SMALL_SCORERS["noise_norm"], "--mitigation",
                              "embedding-noise", "--positive", "member"])
    assert res.exit_code == 2 and "own sampler loop" in res.output, res.output


def _png(folder, i, adapter):
    from PIL import Image

    path = folder / f"{i}.png"
    Image.new("RGB", (adapter.image_size, adapter.image_size), (40 * i, 90, 200)).save(path)
    return path
