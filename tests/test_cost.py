"""Model-call accounting, the estimate, and where the counts are reported."""

import json

import pytest
from typer.testing import CliRunner

from invmm import measure
from invmm.analysis.estimate import worst_case_calls
from invmm.cli import app
from invmm.config import preset
from invmm.families import load_adapter
from invmm.records import forward_equivalents
from invmm.store.files import Ledger

runner = CliRunner()
FAST = dict(similarity="pixel", max_steps=20, check_every=10, sampler_steps=5, batch_size=8)


def test_estimate_equals_the_counted_calls_of_an_image_never_reproduced(tmp_path, toy_model, toy_images):
    paths = [p for p, _ in list(toy_images.values())[:2]]
    adapter = load_adapter(str(toy_model))
    cfg = preset("ddpm", threshold=2.0, **FAST)
    results = measure(adapter, paths, cfg, out=tmp_path / "run", batch_images=2)
    wc = worst_case_calls(adapter, cfg)
    for r in results:
        assert not r.success
        assert {k: r.calls[k] for k in ("opt_forward", "opt_backward", "check_forward")} == \
            {k: wc["low"][k] for k in ("opt_forward", "opt_backward", "check_forward")}
        # The full check (all 8 samples) is the upper bound, and the rounds' first sample the lower.
        assert wc["high"]["check_forward"] == 8 * wc["low"]["check_forward"]
        assert r.calls["similarity"] == 2 and r.calls["vae_decode"] == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    session = info["sessions"][-1]["calls"]
    assert session["check_forward"] == sum(r.calls["check_forward"] for r in Ledger(tmp_path / "run").read())


def test_estimate_command_prints_and_writes_json(tmp_path, toy_model, toy_images):
    data = tmp_path / "data"
    data.mkdir()
    for p, _ in list(toy_images.values())[:3]:
        (data / p.name).write_bytes(p.read_bytes())
    res = runner.invoke(app, ["estimate", str(toy_model), str(data), "--json-out", str(tmp_path / "e.json"),
                              "--max-steps", "100", "--repeats", "2", "--data-format", "folder"])
    assert res.exit_code == 0, res.output
    e = json.loads((tmp_path / "e.json").read_text())
    # the old spellings still work for one release, and say what replaces them
    old = runner.invoke(app, ["estimate", str(toy_model), str(data), "--json", str(tmp_path / "old.json"),
                              "--max-steps", "100", "--format", "folder"])
    assert old.exit_code == 0 and (tmp_path / "old.json").exists(), old.output
    assert "--json FILE is deprecated" in old.output and "--json-out FILE" in old.output
    assert "--format (the dataset's kind) is deprecated" in old.output and "--data-format" in old.output
    assert e["images"] == 3 and e["repeats"] == 2 and e["checks_per_image"] == 2
    low = e["calls_per_image"]["low"]
    assert low["opt_forward"] == 100 * 32 and low["forward_equivalents"] == forward_equivalents(low)
    assert e["probe"]["step_s"] > 0 and e["hours_worst_case"] > 0
    assert "hours, worst case" in res.output
    res = runner.invoke(app, ["estimate", str(toy_model), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_export_and_report_carry_the_counts(tmp_path, toy_model, toy_images):
    p = next(iter(toy_images.values()))[0]
    measure(str(toy_model), [p], preset("ddpm", **FAST), out=tmp_path / "run")
    assert runner.invoke(app, ["export", str(tmp_path / "run")]).exit_code == 0
    header, row = (tmp_path / "run" / "results.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    # 20 steps x 8 noise samples, forward + backward (x2), then the checks' forwards and the memorization map's
    # (n prior samples and the last check's missing ones, each a full sampler run).
    fe, check, map_ = (int(values[k]) for k in ("forward_equivalents", "check_forward", "map_forward"))
    assert fe == 20 * 8 * 3 + check + map_ and check > 0
    cfg = preset("ddpm", **FAST)
    assert map_ % cfg.sampler_steps == 0 and cfg.n_check_samples <= map_ // cfg.sampler_steps < 2 * cfg.n_check_samples
    assert runner.invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    assert "forward-equivalents" in (tmp_path / "run" / "report" / "index.html").read_text()


def test_run_folders_written_before_the_check_shortcuts_resume(tmp_path, toy_model, toy_images):
    """run.json files without the opt-in shortcut fields resume at the defaults, which reproduce them."""
    data = tmp_path / "data"
    data.mkdir()
    for p, _ in list(toy_images.values())[:2]:
        (data / p.name).write_bytes(p.read_bytes())
    args = ["audit", str(toy_model), str(data), "--out", str(tmp_path / "run"), "--similarity", "pixel",
            "--max-steps", "4", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2"]
    assert runner.invoke(app, args).exit_code == 0
    info_path = tmp_path / "run" / "run.json"
    info = json.loads(info_path.read_text())
    for name in ("check_preview_steps", "check_preview_margin", "check_skip_rec"):
        del info["config"][name]
    info_path.write_text(json.dumps(info))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--check-preview", "1"])
    assert res.exit_code == 2 and "check_preview_steps: 0 -> 1" in res.output


def test_shortcut_settings_are_checked(toy_model):
    with pytest.raises(ValueError, match="check_preview_steps needs eta 0"):
        preset("ddpm", check_preview_steps=5, eta=1.0)
    with pytest.raises(ValueError, match="check_skip_rec must be > 0"):
        preset("ddpm", check_skip_rec=0.0)
    adapter = load_adapter(str(toy_model))
    wc = worst_case_calls(adapter, preset("ddpm", check_preview_steps=10, check_skip_rec=0.1, **FAST))
    # Skipped on the loss, an unreproduced image may run no check; at most every preview and every sample.
    assert wc["low"]["check_forward"] == 0
    assert wc["high"]["check_forward"] == 2 * (10 + 8 * 5)
