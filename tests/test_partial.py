"""Partial memorization: the mask through the commands (all ones = no mask, bad masks, run.json, resume), the
mask-weighted loss, the memorization map against independent computations, and `--mask auto`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from same_results import assert_same_result, close
from typer.testing import CliRunner

from invmm.cli import app
from invmm.config import preset
from invmm.functional import MAP_THRESHOLD, memorization_map, reproduction_map
from invmm.inversion.optimise import OptimisationStep
from invmm.runs.measure import measure
from invmm.store.artifacts import artifact_stem, load_map

runner = CliRunner()
FAST = ["--max-steps", "20", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "4"]


def _lines(run):
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _mask(path, fill, size=8):
    a = np.zeros((size, size), np.uint8)
    a[fill] = 255
    Image.fromarray(a).save(path)
    return path


def test_reproduction_and_memorization_maps_against_loops():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 6, 6, generator=g) * 2 - 1
    samples = target + torch.randn(5, 3, 6, 6, generator=g) * 0.3
    for window in (1, 3):
        got = reproduction_map(samples, target, tolerance=0.1, window=window)
        err = (samples - target).abs().mean(1).numpy() / 2
        ref = np.zeros((6, 6))
        r = window // 2
        for n in range(5):
            for y in range(6):
                for x in range(6):
                    patch = err[n, max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
                    ref[y, x] += (patch.mean() <= 0.1) / 5
        assert np.allclose(got.numpy(), ref, atol=1e-6)
    fitted, prior = torch.tensor([[1.0, 0.5], [0.25, 0.0]]), torch.tensor([[0.125, 0.75], [0.25, 0.0]])
    assert torch.equal(memorization_map(fitted, prior), torch.tensor([[0.875, 0.0], [0.0, 0.0]]))


def test_the_mask_weighted_loss_against_numpy_and_its_latent_grid():
    g = torch.Generator().manual_seed(1)
    err = torch.rand(3, 4, 2, 2, generator=g)  # B rows of a 4-channel 2x2 latent
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :6] = 1  # the top half, 3/4 of its width: cells (0,0) full, (0,1) half
    weight = torch.nn.functional.adaptive_avg_pool2d(mask[None], (2, 2))[0]
    assert torch.equal(weight, torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]))
    w = weight.numpy()[0]
    e = err.numpy()
    ref = np.mean([(e[b] * w).sum() / (w.sum() * 4) for b in range(3)])
    assert float(OptimisationStep._weighted(err, weight)) == pytest.approx(ref, rel=1e-6)
    assert float(OptimisationStep._weighted(err, torch.ones(1, 2, 2))) == pytest.approx(float(err.mean()), rel=1e-6)


def test_an_all_ones_mask_gives_exactly_the_unmasked_results(tmp_path, toy_model, toy_images):
    paths = [p for p, _ in list(toy_images.values())[:2]]
    ones = tmp_path / "ones.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(ones)
    # a low threshold so that a check passes: the score, not only inf, must agree
    cfg = preset("ddpm", similarity="pixel", max_steps=30, check_every=10, sampler_steps=5, batch_size=4,
                 threshold=0.5)
    plain = measure(str(toy_model), paths, cfg, out=tmp_path / "plain")
    masked = measure(str(toy_model), paths, cfg, out=tmp_path / "ones", mask=ones)
    assert any(math.isfinite(r.score) for r in plain)
    for a, b in zip(plain, masked):
        assert_same_result(a, b)
        assert a.mask is None and b.mask["fraction"] == 1.0 and b.mask["path"] == str(ones)
        assert close(a.reproduced_fraction, b.reproduced_fraction)


def test_the_memorization_map_changes_no_score_decision_or_draw(tmp_path, toy_model, toy_images):
    """The map's noise comes from its own stream: with it or without it (map_samples 0, the budget the other tests
    use) every record is the same but for the map's fields and calls."""
    paths = [p for p, _ in toy_images.values()]
    cfg = preset("ddpm", similarity="pixel", max_steps=30, check_every=10, sampler_steps=5, batch_size=4,
                 threshold=0.9)
    on = measure(str(toy_model), paths, cfg, out=tmp_path / "on")
    off = measure(str(toy_model), paths, cfg.replace(map_samples=0), out=tmp_path / "off")
    assert any(math.isfinite(r.score) for r in on) and any(math.isinf(r.score) for r in on)
    for a, b in zip(on, off):
        assert_same_result(a, b)
        assert a.calls["map_forward"] > 0 and b.calls.get("map_forward", 0) == 0 and b.reproduced_fraction is None
        assert {k: v for k, v in a.calls.items() if k not in ("map_forward", "vae_decode")} == \
            {k: v for k, v in b.calls.items() if k not in ("map_forward", "vae_decode")}
        assert Path(f"{artifact_stem(tmp_path / 'on', a.id)}.map.png").is_file()
        assert not Path(f"{artifact_stem(tmp_path / 'off', b.id)}.map.png").exists()


def test_bad_masks_are_input_errors_naming_the_file_and_a_resume_refuses_a_changed_mask(tmp_path, toy_model,
                                                                                       toy_images):
    paths = [p for p, _ in toy_images.values()]
    good = _mask(tmp_path / "good.png", np.s_[:, :4])
    Image.fromarray(np.zeros((12, 12), np.uint8) + 255).save(tmp_path / "big.png")
    _mask(tmp_path / "empty.png", np.s_[:0])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    masks = ["good.png", "big.png", "empty.png", "bad.png", "gone.png", ""]
    rows = ["path,mask"] + [f"{p},{tmp_path / m if m else ''}" for p, m in zip(paths, masks)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "data.csv"), "--out", str(tmp_path / "a"),
                              *FAST])
    assert res.exit_code == 2, res.output
    by_path = {d["path"]: d for d in _lines(tmp_path / "a")}
    ok = by_path[str(paths[0])]
    assert ok["status"] == "ok" and ok["mask"]["fraction"] == 0.5 and ok["mask"]["source"] == "manifest"
    import hashlib

    assert ok["mask"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    for p, m, why in zip(paths[1:5], masks[1:5], ("the mask is 12x12, its image 8x8", "the mask is empty",
                                                  "not a readable mask image", "no such mask file")):
        d = by_path[str(p)]
        assert d["status"] == "error" and d["error_kind"] == "input" and m in d["error"] and why in d["error"], d
    assert by_path[str(paths[5])]["status"] == "ok" and "mask" not in by_path[str(paths[5])]
    # --mask PATH for every image, then a resume with another mask, or the same file changed, is refused
    one = [str(p) for p in paths[:1]]
    res = runner.invoke(app, ["measure", str(toy_model), *one, "--out", str(tmp_path / "m"), *FAST, "--mask",
                              str(good)])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert info["mask"] == {"source": "option", "path": str(good),
                            "sha256": hashlib.sha256(good.read_bytes()).hexdigest()}
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / paths[0].name).write_bytes(paths[0].read_bytes())
    args = ["audit", str(toy_model), str(tmp_path / "one"), "--out", str(tmp_path / "r"), *FAST]
    assert runner.invoke(app, [*args, "--mask", str(good)]).exit_code == 0
    assert runner.invoke(app, [*args, "--mask", str(good)]).exit_code == 0  # the same mask resumes
    other = _mask(tmp_path / "other.png", np.s_[4:, :])
    res = runner.invoke(app, [*args, "--mask", str(other)])
    assert res.exit_code == 2 and "made differently: mask good.png" not in res.output and "other.png" in res.output
    _mask(good, np.s_[:, 4:])  # the same file, other pixels
    res = runner.invoke(app, [*args, "--mask", str(good)])
    assert res.exit_code == 2 and "mask" in res.output
    res = runner.invoke(app, [*args])
    assert res.exit_code == 2 and "none (the whole image)" in res.output
    assert len(_lines(tmp_path / "r")) == 1
    res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "data.csv"), "--out", str(tmp_path / "both"),
                              *FAST, "--mask", str(other)])
    assert res.exit_code == 2 and "not both" in res.output


def test_mask_auto_masks_each_image_by_its_first_pass_map(tmp_path, toy_model, toy_images):
    paths = [str(p) for p, e in toy_images.values() if e["copies"] == 64][:1] + \
        [str(p) for p, e in toy_images.values() if e["split"] == "heldout"][:1]
    args = ["audit", str(toy_model), *[], "--out", str(tmp_path / "auto"), "--max-steps", "60", "--check-every", "20",
            "--sampler-steps", "10", "--batch-size", "8", "--mask", "auto"]
    data = tmp_path / "data"
    data.mkdir()
    for p in paths:
        (data / p.rsplit("/", 1)[-1]).write_bytes(open(p, "rb").read())
    args[2:2] = [str(data)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run, first = tmp_path / "auto", tmp_path / "auto" / "whole"
    whole = {d["id"]: d for d in _lines(first)}
    lines = _lines(run)
    assert sorted(d["id"] for d in lines) == sorted(whole)
    for d in lines:
        w = whole[d["id"]]
        region = load_map(artifact_stem(first, d["id"]).with_suffix(".safetensors")) >= MAP_THRESHOLD
        if d["mask"].get("path"):  # measured on the region its first pass reproduced
            mask = np.asarray(Image.open(d["mask"]["path"])) > 0
            assert np.array_equal(mask, region.numpy()) and not w["success"]
            assert d["mask"]["fraction"] == pytest.approx(region.float().mean().item(), abs=1e-6)
        else:  # reproduced whole, or no region: the first pass's result stands
            assert w["success"] or not region.any()
            assert_same_result(d, w)
    info = json.loads((run / "run.json").read_text())
    assert info["auto_mask"]["threshold"] == MAP_THRESHOLD
    assert info["auto_mask"]["masked"] + info["auto_mask"]["kept_whole"] == 2
    res = runner.invoke(app, args)  # a resume: nothing new, nothing twice
    assert res.exit_code == 0, res.output
    assert len(_lines(run)) == 2 and len(_lines(first)) == 2


def test_the_template_toy_plan_its_export_and_its_planted_masks(tmp_path):
    from invmm.data.datasets import load_dataset
    from invmm.zoo import shipped_digits_template_model
    from invmm.zoo.digits import load_manifest
    from invmm.zoo.digits_template import REGIONS, DigitsTemplateConfig, export_template_images, plan_template_dataset

    manifest = load_manifest(shipped_digits_template_model())
    assert manifest["images"] == plan_template_dataset(DigitsTemplateConfig())  # the shipped model's plan
    entries = manifest["images"]
    for k, region in enumerate(REGIONS):
        members = [e for e in entries if e["template"] == k]
        assert len(members) == 64 and len({e["source_index"] for e in members}) == 64
        assert all(e["pattern"] == members[0]["pattern"] and e["region"] == list(region) for e in members)
    templates = [np.array(next(e for e in entries if e["template"] == k)["pattern"]) for k in range(4)]
    held = [e for e in entries if e["split"] == "heldout"]
    assert len(held) == 64 and len({e["source_index"] for e in entries}) == len(entries)
    assert all((np.array(e["pattern"]) != t).sum() >= 6 for e in held for t in templates)
    plain = next(e for e in entries if e["split"] == "train" and e["template"] is None)
    ids = [e["id"] for e in entries if e["template"] == 1][:2] + [held[1]["id"], plain["id"]]
    export_template_images(manifest, tmp_path, ids=ids)
    items = {it.id: it for it in load_dataset(tmp_path / "manifest.csv")}
    for e in entries:
        if e["id"] not in items:
            continue
        img = np.asarray(Image.open(items[e["id"]].path))
        if e["region"] is None:
            assert items[e["id"]].mask is None
            continue
        t, left, b, r = e["region"]
        mask = np.asarray(Image.open(items[e["id"]].mask)) > 0
        assert mask.sum() == 16 and mask[t:b, left:r].all()
        assert np.array_equal(img[t:b, left:r].ravel(), np.array(e["pattern"]))


def test_mask_auto_without_maps_is_refused_and_a_budget_between_checks_still_ends_with_a_map(tmp_path, toy_model,
                                                                                              toy_images):
    """Fails before the fix: with --map-samples 0 or a budget off the check grid there was no map, every image was
    kept whole with a note, and the run ended normally."""
    p = next(iter(toy_images.values()))[0]
    data = tmp_path / "data"
    data.mkdir()
    (data / p.name).write_bytes(p.read_bytes())
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(tmp_path / "none"), *FAST,
                              "--mask", "auto", "--map-samples", "0"])
    assert res.exit_code == 2 and "--map-samples 0 makes no maps" in res.output and not (tmp_path / "none").exists()
    # 25 steps with a check every 10 (and, second, every check skipped): no check at the budget's last step
    for name, extra in (("off-grid", []), ("skipped", ["--check-skip-rec", "1e-9"])):
        res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(tmp_path / name), *FAST,
                                  "--max-steps", "25", "--threshold", "2", *extra])
        assert res.exit_code == 0, res.output
        (d,) = _lines(tmp_path / name)
        assert d["steps"] == 25 and d["score_is_inf"] and d["reproduced_fraction"] is not None
        assert load_map(Path(f"{artifact_stem(tmp_path / name, d['id'])}.safetensors")) is not None
        assert d["calls"]["map_forward"] > 0
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(tmp_path / "auto"), *FAST,
                              "--max-steps", "25", "--threshold", "2", "--mask", "auto"])
    assert res.exit_code == 0, res.output
    (d,) = _lines(tmp_path / "auto")
    first_map = load_map(Path(f"{artifact_stem(tmp_path / 'auto' / 'whole', d['id'])}.safetensors"))
    assert first_map is not None and d["mask"]["source"] == "auto"
    assert bool(d["mask"].get("path")) == bool(first_map.ge(MAP_THRESHOLD).any())  # masked where the map marks


def test_masked_and_whole_image_scores_are_marked_and_never_compared_unsaid(tmp_path, toy_model, toy_images):
    """Fails before the fix: masked and whole-image results shared one ranking, export and comparison with nothing
    to tell them apart but a mask path."""
    import csv

    paths = [p for p, _ in list(toy_images.values())[:3]]
    data = tmp_path / "data"
    data.mkdir()
    for p in paths:
        (data / p.name).write_bytes(p.read_bytes())
    _mask(tmp_path / "quarter.png", (slice(0, 4), slice(0, 4)))
    rows = ["path,mask"] + [f"data/{p.name},{'quarter.png' if i < 2 else ''}" for i, p in enumerate(paths)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "w.csv").write_text("\n".join(["path"] + [f"data/{p.name}" for p in paths]) + "\n")
    common = [*FAST, "--threshold", "-1", "--map-samples", "0"]  # every check passes: finite scores of both kinds
    for out, data_arg in (("mixed", tmp_path / "m.csv"), ("whole", tmp_path / "w.csv")):
        res = runner.invoke(app, ["audit", str(toy_model), str(data_arg), "--out", str(tmp_path / out), *common])
        assert res.exit_code == 0, res.output
    from invmm.store.files import Ledger

    recs = {r.id: r for r in Ledger(tmp_path / "mixed").read()}
    kinds = {i.split("/")[-1]: r.measured_on for i, r in recs.items()}
    assert sorted(kinds.values()) == ["mask", "mask", "whole"]
    masked = next(r for r in recs.values() if r.measured_on == "mask")
    assert masked.region == ("mask", masked.mask["sha256"]) and masked.mask["fraction"] == 0.25
    assert runner.invoke(app, ["export", str(tmp_path / "mixed")]).exit_code == 0
    exported = list(csv.DictReader(open(tmp_path / "mixed" / "results.csv")))
    assert sorted(r["measured_on"] for r in exported) == ["mask", "mask", "whole"]
    assert all((r["mask_sha256"] == masked.mask["sha256"]) == (r["measured_on"] == "mask") for r in exported)
    assert runner.invoke(app, ["report", str(tmp_path / "mixed")]).exit_code == 0
    page = (tmp_path / "mixed" / "report" / "index.html").read_text()
    assert "2 image(s) were measured on a mask and 1 on the whole image" in page and "measured on a mask (0.25" in page
    res = runner.invoke(app, ["compare", str(tmp_path / "whole"), str(tmp_path / "mixed")])
    assert res.exit_code == 0, res.output
    assert res.output.count("measured on other regions") == 3 and "no change is given" in res.output


def test_a_mask_sscd_cannot_take_is_an_input_error_naming_it(tmp_path, toy_model, toy_images, monkeypatch):
    """More boxes than SSCD compares (here the cap lowered to 1, so two corners are too many) is refused before any
    step, as an input error of that image naming its mask; the other image is measured."""
    import invmm.similarity.sscd as sscd

    monkeypatch.setattr(sscd, "MAX_BOXES", 1)
    paths = [p for p, _ in list(toy_images.values())[:2]]
    two = tmp_path / "two.png"
    a = np.zeros((8, 8), np.uint8)
    a[:4, :2] = 255
    a[4:, 6:] = 255
    Image.fromarray(a).save(two)
    one = _mask(tmp_path / "one.png", (slice(0, 4), slice(0, 4)))
    (tmp_path / "m.csv").write_text(f"path,mask\n{paths[0]},{two}\n{paths[1]},{one}\n")
    res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "m.csv"), "--out", str(tmp_path / "r"), *FAST,
                              "--similarity", "sscd", "--max-steps", "2", "--check-every", "2", "--map-samples", "0"])
    assert res.exit_code == 2, res.output
    recs = {d["id"]: d for d in _lines(tmp_path / "r")}
    bad, good = recs[str(paths[0])], recs[str(paths[1])]
    assert bad["error_kind"] == "input" and "two.png: SSCD compares a mask's region box by box" in bad["error"]
    assert good["status"] == "ok" and good["mask"]["fraction"] == 0.25
