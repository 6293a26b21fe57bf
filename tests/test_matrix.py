"""Every scorer on every family's tiny pipeline, in every mode it allows: a cell either gives finite scores for two
images or is refused clearly (a ScorerError naming what the model or the input lacks). Building is not enough:
each cell scores."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from families import FAMILIES, SMALL_SCORERS, given, images, real_schedule
from PIL import Image
from typer.testing import CliRunner

from invmm.cli import app
from invmm.families import build_tiny, load_adapter
from invmm.families.base import CLASS, NOISE_SCHEDULE, TEXT
from invmm.scorers import DEFAULT_SCORERS, SCORERS, ScorerError, auto_screen, build_scorer, runnable
from invmm.store.artifacts import artifact_stem

runner = CliRunner()

MODES = ("known", "free")  # the image's caption or class given; or none (inverted, or the empty caption)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_family):
    return request.param, load_adapter(str(tiny_family(request.param)))


def test_every_capability_a_scorer_can_require_is_refused_in_words(tiny_family):
    """A scorer requiring the class capability on a model without it: a ScorerError naming it, not a KeyError."""
    from dataclasses import dataclass

    from invmm.families.base import CAPABILITIES
    from invmm.scorers.base import CAPABILITY_NAMES, Scorer

    assert set(CAPABILITY_NAMES) == set(CAPABILITIES)

    @dataclass
    class NeedsClass(Scorer):
        name = "needs_class"
        requires = (CLASS,)

    with pytest.raises(ScorerError, match="needs class conditioning; the ddpm model"):
        NeedsClass(load_adapter(str(tiny_family("ddpm"))))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCORERS))
def test_every_scorer_scores_or_refuses_at_construction(family, name, mode):
    fam, adapter = family
    if mode == "known" and not adapter.conditional:
        pytest.skip("an unconditional model has nothing to know")
    missing = set(SCORERS[name].requires) - set(adapter.capabilities)
    if missing:
        with pytest.raises(ScorerError, match="needs") as info:
            build_scorer(SMALL_SCORERS[name], adapter)
        # The message names the model's family and what it lacks.
        assert adapter.family in str(info.value)
        return
    # InvMM at a threshold every sample passes: its score is then the finite KL at the first check.
    scorer = build_scorer(SMALL_SCORERS[name] + (",threshold=-1.0" if name == "invmm" else ""), adapter)
    conds = [given(adapter, i) for i in range(2)] if mode == "known" else [None, None]
    x = images(adapter)
    if mode == "free" and scorer.needs_caption:
        # A caption-level detector, or CLiD, needs the caption: without one it says so, naming the image.
        with pytest.raises(ScorerError, match="caption"):
            scorer.score(x, ["a", "b"], conds, seed=0)
        return
    if mode == "free" and name == "invmm" and not getattr(adapter, "default_invert_prompt", True):
        # PixArt measures with the caption unless told otherwise, as `invmm measure` does.
        with pytest.raises(ScorerError, match="caption"):
            scorer.score(x, ["a", "b"], conds, seed=0)
        return
    scores = scorer.score(x, ["a", "b"], conds, seed=0)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores), (fam, name, mode, scores)
    if name == "invmm":
        # The invmm scorer inverts the conditioning exactly when none is given, like `invmm measure`.
        for image_id, cond in zip(["a", "b"], conds):
            r = scorer.results[image_id]
            if CLASS in adapter.capabilities:
                assert r.class_mode == ("known" if mode == "known" else "inverted")
            elif TEXT in adapter.capabilities and mode == "known":
                assert (r.prompt_mode, r.prompt) == ("caption", cond)


# One tiny pipeline per family for the commands (the variants differ below the command line, where the tests
# above run them all): pixel DDPM, LDM, SD 1.x/2.x, SD3, SDXL, Flux, PixArt, DiT.
E2E_FAMILIES = ("ddpm", "ldm-kl", "sd", "sd3", "sdxl", "flux-dev", "pixart-sigma", "dit")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A manifest of 4 PNGs (2 'member', 2 'other') for each family, with captions or classes where the family
    is conditioned on them: {family: (model folder with 1,000 training timesteps, manifest)}."""
    root = tmp_path_factory.mktemp("matrix-e2e")
    out = {}
    for fam in E2E_FAMILIES:
        model = build_tiny(fam, root / fam / "model", **real_schedule(fam))
        adapter = load_adapter(str(model))
        rows = ["path,label,caption,class"]
        for i, x in enumerate(images(adapter, 4, seed=1)):
            mode = "L" if x.shape[0] == 1 else "RGB"
            pixels = ((x.permute(1, 2, 0).squeeze(-1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            path = root / fam / f"img{i}.png"
            Image.fromarray(pixels, mode=mode).save(path)
            g = given(adapter, i if CLASS in adapter.capabilities else 0)  # one caption: one generate_compare set
            rows.append(f"{path},{['member', 'other'][i % 2]},"
                        f"{g if TEXT in adapter.capabilities else ''},{g if CLASS in adapter.capabilities else ''}")
        manifest = root / fam / "data.csv"
        manifest.write_text("\n".join(rows) + "\n")
        write_shard_and_parquet(manifest)
        out[fam] = (model, manifest)
    return out


def write_shard_and_parquet(manifest):
    """The manifest's images, labels, captions and classes as a webdataset shard (data.tar: .png/.txt/.cls and a
    .json label) and as a Parquet of image bytes (data.parquet), with ids data/img{i} (the shard's own), and the
    manifest with those ids (data_ids.csv)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    csv_rows, table = ["path,label,caption,class,id"], []
    with wds.TarWriter(str(manifest.with_suffix(".tar"))) as tar:
        for i, (path, label, caption, cls) in enumerate(rows):
            sample = {"__key__": f"img{i}", "png": Path(path).read_bytes(), "json": json.dumps({"label": label})}
            sample.update({"txt": caption} if caption else {})
            sample.update({"cls": cls} if cls else {})
            tar.write(sample)
            csv_rows.append(f"{path},{label},{caption},{cls},data/img{i}")
            table.append({"image": {"bytes": Path(path).read_bytes(), "path": None}, "id": f"data/img{i}",
                          "caption": caption or None, "class": cls or None, "label": label})
    manifest.with_name("data_ids.csv").write_text("\n".join(csv_rows) + "\n")
    pq.write_table(pa.Table.from_pylist(table), manifest.with_suffix(".parquet"))


TINY_INVMM = ["--max-steps", "2", "--check-every", "2", "--batch-size", "2", "--sampler-steps", "2",
              "--similarity", "pixel"]


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_evaluate_and_the_screen_with_their_defaults_run_on_every_family(tmp_path, labelled, fam):
    """evaluate's default scorers, the audit's default screen with a random sample of the rest, and `assess` on
    that design, through the commands on each family."""
    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    # every default scorer on images, labels and conditioning read from a Parquet of image bytes
    res = runner.invoke(app, ["evaluate", str(tmp_path / "eval"), "--model", str(model), "--data",
                              str(manifest.with_suffix(".parquet")), "--positive", "member", "--bootstrap", "10",
                              *TINY_INVMM])
    assert res.exit_code == 0, res.output
    scored = {json.loads(line)["scorer"] for line in (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()}
    expected, left_out = runnable(DEFAULT_SCORERS, adapter)
    assert scored == set(expected) and all(f"default scorer {n} left out" in res.output for n in left_out)
    if NOISE_SCHEDULE not in adapter.capabilities:
        assert set(left_out) == {"loss", "secmi", "pia"}
    # the model-level design: the screen's top 1 (a census) and a random 2 of the other 3, then the gate
    res = runner.invoke(app, ["audit", str(model), str(manifest), "--out", str(tmp_path / "audit"), "--screen", "auto",
                              "--keep-top", "1", "--sample", "2", *TINY_INVMM])
    assert res.exit_code == 0, res.output
    design = json.loads((tmp_path / "audit" / "run.json").read_text())["design"]
    inverted = {json.loads(line)["id"] for line in (tmp_path / "audit" / "results.jsonl").read_text().splitlines()}
    assert design["population"] == 4 and len(inverted) == 3
    gate = runner.invoke(app, ["assess", str(tmp_path / "audit"), "--max-rate", "0.5", "--json"])
    assert gate.exit_code in (0, 1, 3), gate.output
    j = json.loads(gate.stdout)
    assert j["census"]["n"] == 1 and j["sample"]["n"] == 2 and j["sample"]["frame"] == 3
    assert j["decision"] == {0: "go", 1: "no-go", 3: "undecided"}[gate.exit_code]
    screen = auto_screen(adapter)
    if screen != "loss":  # a model without a noise schedule: --screen loss is refused, naming what it can use
        bad = runner.invoke(app, ["audit", str(model), str(manifest), "--out", str(tmp_path / "bad"),
                                  "--screen", "loss", "--keep-top", "1", *TINY_INVMM])
        assert bad.exit_code == 2 and f"can screen with: {screen}" in bad.output
    assert f"screen {screen}: 1 of 4 images kept" in res.output
    assert json.loads((tmp_path / "audit" / "run.json").read_text())["screen"]["scorer"] == screen


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_audit_with_the_refinement_on_every_family_known_and_inverted(tmp_path, labelled, fam):
    """`audit --refine` through the command on each family, with the data's captions or classes and, for a
    conditional family, inverted: every check passes here (threshold -1), so the refined score is the paper's."""
    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    modes = [[], ["--invert-prompt"]] if adapter.conditional else [[]]
    for k, mode in enumerate(modes):
        out = tmp_path / f"audit{k}"  # the data's captions or classes read from a webdataset shard
        res = runner.invoke(app, ["audit", str(model), str(manifest.with_suffix(".tar")), "--out", str(out),
                                  *TINY_INVMM,
                                  "--threshold", "-1", "--refine", "--refine-samples", "8", *mode])
        assert res.exit_code == 0, res.output
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 4
        for d in lines:
            assert d["success"] and d["refined_score"] == d["score"], d
            assert d["refine"]["points"][0][:4] == [2, d["score"], 8, 8]
            if mode:
                assert d.get("prompt_mode") == "inverted" or d.get("class_mode") == "inverted"


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_shards_and_a_hugging_face_parquet_audit_as_the_manifest_does_on_every_family(tmp_path, labelled, fam):
    """The same images, labels, captions and classes given as a manifest, as a webdataset shard (.png/.txt/.cls) and as
    a Parquet of image bytes, with the same ids: the readers hand over the manifest's pixels and conditioning,
    and `audit --screen auto` from the shard and from the Parquet keeps the same images with the same scores
    (per-image seeds follow the id)."""
    from invmm.data.datasets import load_dataset
    from invmm.data.images import load_image

    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    sources = {"manifest": manifest.with_name("data_ids.csv"), "shards": manifest.with_suffix(".tar"),
               "parquet": manifest.with_suffix(".parquet")}

    def given(source):
        return [(it.id, it.caption, it.class_label, it.label,
                 load_image(it, mode=adapter.image_mode, size=adapter.image_size).pixels) for it in
                load_dataset(source)]

    reference = given(sources["manifest"])
    for name in ("shards", "parquet"):
        got = given(sources[name])
        assert [g[:4] for g in got] == [r[:4] for r in reference], name
        assert all(torch.equal(g[4], r[4]) for g, r in zip(got, reference)), name
    results = {}
    for name in ("shards", "parquet"):
        out = tmp_path / name
        res = runner.invoke(app, ["audit", str(model), str(sources[name]), "--out", str(out), "--screen", "auto",
                                  "--keep-top", "2", "--threshold", "-1", *TINY_INVMM])
        assert res.exit_code == 0, (name, res.output)
        results[name] = {d["id"]: d["score"] for d in map(json.loads, (out / "results.jsonl").read_text().split(
            "\n")[:-1])}
    assert len(results["shards"]) == 2 and results["parquet"].keys() == results["shards"].keys()
    for i, score in results["shards"].items():
        assert math.isfinite(score) and results["parquet"][i] == pytest.approx(score, rel=1e-5), i


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_masks_and_the_memorization_map_on_every_family(tmp_path, labelled, fam):
    """Partial memorization through the command on each family: a manifest's mask column, SSCD on the region, the
    mask-weighted loss on the family's x0 grid (the conditioning inverted where the family is conditional: the
    known one takes the same path through the mask), and every image's memorization map. The all-ones mask and
    --mask auto are family-agnostic beyond this (test_partial.py)."""
    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    rows = manifest.read_text().splitlines()
    w, h = Image.open(rows[1].split(",")[0]).size
    left = np.zeros((h, w), np.uint8)
    left[:, : w // 2] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    masked = tmp_path / "masked.csv"
    masked.write_text("\n".join([rows[0] + ",mask"] + [r + f",{tmp_path / 'left.png'}" for r in rows[1:]]) + "\n")
    out = tmp_path / "masked"
    res = runner.invoke(app, ["audit", str(model), str(masked), "--out", str(out), *TINY_INVMM, "--similarity", "sscd",
                              *(["--invert-prompt"] if adapter.conditional else [])])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(d["status"] == "ok" for d in lines)
    for d in lines:
        assert d["mask"]["source"] == "manifest" and d["mask"]["fraction"] == pytest.approx(0.5, abs=0.05)
        assert 0 <= d["reproduced_fraction"] <= 1 and d["calls"]["map_forward"] > 0
        assert Path(f"{artifact_stem(out, d['id'])}.map.png").is_file()
    assert json.loads((out / "run.json").read_text())["mask"]["n"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_early_stop_on_every_family_known_and_inverted(tmp_path, labelled, fam):
    """`audit --early-stop` through the command on each family, with the data's captions or classes and, for a
    conditional family, inverted: the tiny random pipelines reproduce nothing, so every image is examined at the
    patience (its centre and one draw, at the scale its check came closest at) and stops there, recorded as such;
    the export says so."""
    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    modes = [[], ["--invert-prompt"]] if adapter.conditional else [[]]
    for k, mode in enumerate(modes):
        out = tmp_path / f"audit{k}"
        res = runner.invoke(app, ["audit", str(model), str(manifest), "--out", str(out), *TINY_INVMM[2:],
                                  "--max-steps", "4", "--early-stop", "--early-stop-patience", "2",
                                  "--early-stop-samples", "2", *mode])
        assert res.exit_code == 0, res.output
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(lines) == 4
        for d in lines:
            assert d["status"] == "ok" and d["score"] is None and d["score_is_inf"] and d["steps"] == 2, d
            assert d["early_stop"]["stopped"] and d["early_stop"]["exams"][0][:3] == [2, 0, 2], d["early_stop"]
            assert d["calls"]["stop_forward"] > 0
        assert runner.invoke(app, ["export", str(out)]).exit_code == 0
        assert (out / "results.csv").read_text().count(",True,2,") == 4


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_track_on_every_family_its_denoiser_and_lora_checkpoints(tmp_path, labelled, fam):
    """`invmm track` through the command on each family: a checkpoint holding the denoiser alone (unet/ or
    transformer/, audited on --base), a LoRA checkpoint where the family has a LoRA format, and the final pipeline;
    every check passes (threshold -1), so each checkpoint reproduces the 4 images, with the screen's AUC."""
    from families import make_lora

    from invmm.families import family

    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    denoiser = "unet" if (model / "unet").is_dir() else "transformer"
    train = tmp_path / "train"
    adapter.denoiser.save_pretrained(train / "checkpoint-1" / denoiser, safe_serialization=True)
    kinds = [(1, "denoiser")]
    if family(adapter.family).lora is not None:
        make_lora(model, train / "checkpoint-2")
        kinds.append((2, "lora"))
    out = tmp_path / "track"
    res = runner.invoke(app, ["track", str(train), str(manifest), "--out", str(out), "--base", str(model), "--final",
                              str(model), "--final-step", "3", "--screen", "auto", "--keep", "1.0", *TINY_INVMM,
                              "--threshold", "-1", "--map-samples", "0"])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "track.json").read_text())["checkpoints"]
    assert [(r["step"], r["kind"]) for r in rows] == [*kinds, (3, "pipeline")]
    for r in rows:
        assert (r["reproduced"], r["n"], r["lower"], r["upper"]) == (4, 4, 4, 4), r
        assert r["screen"]["scorer"] == auto_screen(adapter) and 0 <= r["screen"]["auc"] <= 1, r["screen"]


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_every_mitigation_generates_or_is_refused_on_every_family(tiny_family, fam):
    """Each inference-time mitigation on each family's tiny pipeline: it generates mitigated samples (two, at three
    sampler steps, two guidance scales) that differ from the unmitigated ones where its default settings change
    anything, or it is refused with the reason before anything runs."""
    from invmm.mitigations import MITIGATIONS, MitigationError, build_mitigations, install

    model = tiny_family(fam)
    plain = load_adapter(str(model))
    for name in MITIGATIONS:
        adapter = load_adapter(str(model))
        try:
            mitigations = build_mitigations([name], adapter)
        except MitigationError as exc:
            assert "does not apply to this model" in str(exc) and adapter.family in str(exc), str(exc)
            continue
        assert adapter.conditional and TEXT in adapter.capabilities, (fam, name)
        install(adapter, mitigations)
        noise = torch.randn((2, *adapter.latent_shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cond = adapter.prompt_embeddings(["a red square", "a blue circle"])
            out = adapter.generate(noise, steps=3, cond=cond, guidance=[1.0, 3.0])
            want = plain.generate(noise, steps=3, cond=plain.prompt_embeddings(["a red square", "a blue circle"]),
                                  guidance=[1.0, 3.0])
        assert out.shape == want.shape and torch.isfinite(out).all(), (fam, name)
        if name != "prompt-adjust":  # a tiny random model may already meet the adjustment's target: nothing to move
            assert not torch.allclose(out, want, atol=1e-4), (fam, name)
        assert adapter.mitigations == ({"name": name, **mitigations[0].settings()},)


@pytest.mark.slow
@pytest.mark.parametrize("fam", E2E_FAMILIES)
def test_mitigation_eval_on_every_family(tmp_path, labelled, fam):
    """`invmm mitigation-eval` through the command on each family: on a text-to-image family the three numbers for
    none and embedding noise, with the known caption and the conditioning inverted; elsewhere a clear refusal."""
    import csv

    model, manifest = labelled[fam]
    adapter = load_adapter(str(model))
    (tmp_path / "others.csv").write_text("caption\na green tree\n")
    res = runner.invoke(app, ["mitigation-eval", str(model), str(manifest), "--others", str(tmp_path / "others.csv"),
                              "--out", str(tmp_path / "m"), "--mitigation", "embedding-noise", "--generations", "2",
                              "--side-generations", "1", *TINY_INVMM, "--map-samples", "0"])
    if TEXT not in adapter.capabilities:
        assert res.exit_code == 2 and "does not apply to this model" in res.output, res.output
        return
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "m" / "mitigation.csv")))
    assert len(rows) == 2 * 4 and {r["mitigation"] for r in rows} == {"none", "embedding-noise"}
    for r in rows:
        assert 0 <= float(r["plain_share"]) <= 1 and r["adversarial_reproduced"] in ("True", "False")
        assert r["inverted_reproduced"] in ("True", "False"), r
    side = list(csv.DictReader(open(tmp_path / "m" / "side_effects.csv")))
    assert [float(s["mean_similarity"]) for s in side if s["mitigation"] == "none"] == [pytest.approx(1.0)]
