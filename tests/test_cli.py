import json
import math

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from invmm.cli import app
from invmm.records import InversionRecord
from invmm.store.artifacts import artifact_stem
from invmm.zoo.tiny import build_tiny_pixel

runner = CliRunner()
FAST = ["--max-steps", "20", "--check-every", "10", "--batch-size", "8", "--sampler-steps", "10"]


def read_results(out):
    return {r.id: r for r in (InversionRecord.from_json(json.loads(line))
                              for line in (out / "results.jsonl").read_text().splitlines())}


def test_measure_writes_a_complete_run_and_keeps_going_past_bad_files(tmp_path, toy_model, toy_images):
    fake = tmp_path / "fake.png"
    fake.write_text("text, not an image")
    good = [str(p) for p, _ in list(toy_images.values())[:2]]
    out = tmp_path / "run"
    res = runner.invoke(app, ["measure", str(toy_model), *good, str(fake), str(tmp_path / "missing.png"),
                              "--out", str(out), "--seed", "3", *FAST])
    assert res.exit_code == 2, res.output  # input errors -> 2, after measuring the good images
    assert "not an image file" in res.output and "missing.png" in res.output
    results = read_results(out)
    assert len(results) == 4
    ok = [r for r in results.values() if r.status == "ok"]
    assert len(ok) == 2
    for r in ok:
        assert r.steps in (10, 20) and r.seed == 3 and r.model == str(toy_model)
        assert r.id in res.output and (r.success or math.isinf(r.score))
        # A failed check stops at its first round with a non-copy: fewer similarities than samples.
        assert (len(r.similarities) == 8 if r.success else 1 <= len(r.similarities) < 8) and r.seconds > 0
        stem = artifact_stem(out, r.id)
        tensors = load_file(str(stem) + ".safetensors")
        assert tensors["mu"].shape == (1, 8, 8) and tensors["logvar"].shape == (1, 8, 8)
        assert (stem.parent / (stem.name + ".png")).stat().st_size > 100
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "ddpm" and run["model"]["prediction_type"] == "epsilon"
    assert run["config"]["max_steps"] == 20 and run["config"]["similarity"] == "pixel" and run["versions"]["torch"]
    # One record schema for measure and audit: the config lives in run.json, the cost in its sessions.
    assert run["kind"] == "measure" and run["sessions"][0]["scored"] == 2 and run["sessions"][0]["errors"] == 2
    assert str(toy_model) in run["model"]["source"]


def test_sscd_similarity_end_to_end(tmp_path, toy_model, toy_images):
    p = next(iter(toy_images.values()))[0]
    out = tmp_path / "sscd"
    res = runner.invoke(app, ["measure", str(toy_model), str(p), "--similarity", "sscd", "--out", str(out),
                              "--max-steps", "10", "--check-every", "10", "--batch-size", "4",
                              "--sampler-steps", "5"])
    assert res.exit_code == 0, res.output
    (r,) = read_results(out).values()
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["similarity"] == "sscd" and config["beta"] == 0.5
    assert all(-1.0 <= s <= 1.0 for s in r.similarities) and len(set(r.similarities)) > 1


def test_existing_run_is_never_overwritten(tmp_path, toy_model, toy_images):
    p = next(iter(toy_images.values()))[0]
    out = tmp_path / "run"
    assert runner.invoke(app, ["measure", str(toy_model), str(p), "--out", str(out), *FAST]).exit_code == 0
    before = (out / "results.jsonl").read_bytes()
    res = runner.invoke(app, ["measure", str(toy_model), str(p), "--out", str(out), *FAST])
    assert res.exit_code == 2 and "already holds a run" in res.output
    assert (out / "results.jsonl").read_bytes() == before


def test_bad_model_folder_and_bad_option_exit_2(tmp_path, toy_images):
    p = next(iter(toy_images.values()))[0]
    (tmp_path / "m").mkdir()
    res = runner.invoke(app, ["measure", str(tmp_path / "m"), str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no scheduler" in res.output
    res = runner.invoke(app, ["measure", str(tmp_path / "nope"), str(p)])
    assert res.exit_code == 2 and "no such folder" in res.output
    res = runner.invoke(app, ["measure", str(tmp_path / "m"), str(p), "--batch-images", "0"])
    assert res.exit_code == 2 and "--batch-images" in res.output
    tiny = build_tiny_pixel(tmp_path / "tiny")  # 100 training timesteps; the ddpm preset's DDIM wants 200
    res = runner.invoke(app, ["measure", str(tiny), str(p), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "sampler_steps 200 exceeds the 100 timesteps" in res.output
    assert not (tmp_path / "t").exists()  # refused before anything was written


@pytest.mark.slow
def test_demo_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--per-group", "1", "--max-steps", "50"])
    assert res.exit_code == 0, res.output
    assert "by group" in res.output and "held out" in res.output
    assert len(read_results(out)) == 3


def test_divergence_exits_1_and_is_recorded(tmp_path, toy_images):
    import torch
    from safetensors.torch import load_file, save_file


    model = build_tiny_pixel(tmp_path / "nan")
    wfile = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(wfile)
    weights = {k: torch.full_like(v, float("nan")) if k.startswith("conv_out") else v for k, v in weights.items()}
    save_file(weights, wfile)
    p = next(iter(toy_images.values()))[0]
    out = tmp_path / "run"
    res = runner.invoke(app, ["measure", str(model), str(p), "--out", str(out), *FAST])
    assert res.exit_code == 1, res.output
    (r,) = read_results(out).values()
    assert r.status == "error" and "NaN" in r.error and p.name in res.output


def test_the_device_defaults_to_auto_says_which_and_a_resume_keeps_its_kind(tmp_path, toy_model, toy_images):
    """Fails before the fix: --device defaulted to cpu without a word, and a resume never compared the device."""

    import torch

    data = tmp_path / "data"
    data.mkdir()
    p = next(iter(toy_images.values()))[0]
    (data / p.name).write_bytes(p.read_bytes())
    args = ["audit", str(toy_model), str(data), "--out", str(tmp_path / "run"), "--max-steps", "2",
            "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2", "--map-samples", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert res.output.splitlines()[0].startswith(f"invmm: computing on {expected} (--device auto: torch sees")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["device"] == expected
    # The run began on another kind of device (as a run started on a GPU machine): the resume says so.
    info["device"] = "cuda:0" if expected == "cpu" else "cpu"
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and f"device {info['device']} -> {expected}" in res.output, res.output
    if torch.cuda.is_available():
        pytest.skip("the refusal of an unseen CUDA device is checked on machines without one")
    res = runner.invoke(app, ["measure", str(toy_model), str(p), "--device", "cuda", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "torch sees no CUDA device" in res.output and not (tmp_path / "c").exists()
    res = runner.invoke(app, ["measure", str(toy_model), str(p), "--device", "gpu0", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not a torch device" in res.output
