"""Early stopping (inversion/early_stop.py): a stopped inversion is the full run cut at its stop and says so in every
reader; images with a sign of a copy run their budget; resume, repeats and estimate."""

import csv
import json
import math

import pytest
from same_results import assert_same_checks, assert_same_result
from typer.testing import CliRunner

from invmm import measure
from invmm.cli import app
from invmm.config import preset
from invmm.records import InversionRecord
from invmm.store.files import Ledger

runner = CliRunner()
SMALL = dict(similarity="pixel", max_steps=200, sampler_steps=20, batch_size=8)
CLI_SMALL = ["--similarity", "pixel", "--max-steps", "200", "--sampler-steps", "20", "--batch-size", "8"]


@pytest.fixture(scope="module")
def images(toy_images):
    """A 64-copy digit (a sign of a copy from its first check) and two held-out digits (none within 200 steps)."""
    memorized = next(p for p, e in toy_images.values() if e["copies"] == 64)
    held_out = [p for p, e in toy_images.values() if e["split"] == "heldout"][:2]
    return [memorized, *held_out]


@pytest.fixture(scope="module")
def runs(toy_model, images, tmp_path_factory):
    """The same images without the option, observed (a patience beyond the budget: nothing stops) and stopped at
    a patience of 100 steps."""
    out = tmp_path_factory.mktemp("early")
    plain = measure(str(toy_model), images, preset("ddpm", **SMALL), batch_images=3)
    observed = measure(str(toy_model), images, preset("ddpm", **SMALL, early_stop=True, early_stop_patience=201),
                       batch_images=3)
    stopped = measure(str(toy_model), images, preset("ddpm", **SMALL, early_stop=True, early_stop_patience=100),
                      out=out / "run", batch_images=3)
    return {"plain": plain, "observed": observed, "stopped": stopped, "folder": out / "run"}


def test_without_a_stop_the_option_changes_no_result_and_records_its_evidence(runs):
    for a, b in zip(runs["plain"], runs["observed"]):
        assert_same_result(a, b, what="observe")
        assert a.early_stop is None and b.early_stop["stopped"] is False
        # observing with a budget of 200: the first observed examination step (200) is the budget's end: none
        assert b.calls["stop_forward"] == 0 and b.early_stop["exams"] == []
        # the evidence: the first check whose samples reached the threshold
        assert (b.early_stop["first_sign"] is not None) == (b.early_stop["best_similarity"] >= 0.985)


def test_a_stopped_inversion_is_the_full_run_cut_at_its_stop(runs):
    full = {r.id: r for r in runs["observed"]}
    stopped = [r for r in runs["stopped"] if r.early_stop["stopped"]]
    assert len(stopped) == 2  # the two held-out digits; the 64-copy digit showed a sign at its first check
    for r in stopped:
        f = full[r.id]
        assert f.early_stop["first_sign"] is None and not f.success
        assert (r.status, r.success, math.isinf(r.score), r.steps) == ("ok", False, True, 100)
        evidence = dict(r.early_stop)
        assert evidence.pop("best_similarity") < 0.985
        (step, copies, samples, best, first_copy), = evidence.pop("exams")
        assert (step, copies, samples, first_copy) == (100, 0, 32, None) and best < 0.985
        assert evidence == {"stopped": True, "rule": "no-copy-sign", "step": 100, "patience": 100, "samples": 32,
                            "beta": 0.985, "first_sign": None}
        assert r.calls["stop_forward"] == 32 * 20  # the examination: 32 samples of 20 sampler steps
        # its steps up to the stop are the full run's (its checks at 50 and 100, KL, lambda, loss, similarity)
        assert_same_checks(r.checks, f.checks[: len(r.checks)], what=r.id)
        assert [c.step for c in r.checks] == [50, 100]
        assert r.calls["opt_forward"] == 100 * 8 and f.calls["opt_forward"] == 200 * 8
    kept = next(r for r in runs["stopped"] if not r.early_stop["stopped"])
    assert kept.early_stop["exams"][0][:3] == [100, kept.early_stop["exams"][0][1], 32]
    assert kept.early_stop["exams"][0][1] > 0  # the 64-copy digit: copies among the examination's samples
    assert_same_result(kept, full[kept.id], what="not stopped")


def test_a_stopped_record_round_trips_through_the_ledger_export_and_report(runs):
    folder = runs["folder"]
    lines = Ledger(folder).read()
    assert {r.id: r.early_stop for r in lines} == {r.id: r.early_stop for r in runs["stopped"]}
    again = InversionRecord.from_json(json.loads(json.dumps(lines[1].to_json())))
    assert again.early_stop == lines[1].early_stop
    res = runner.invoke(app, ["export", str(folder)])
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in csv.DictReader((folder / "results.csv").open())}
    stopped = [r for r in rows.values() if r["stopped_early"] == "True"]
    assert len(stopped) == 2 and all(r["stop_step"] == "100" and r["score"] == "inf" for r in stopped)
    assert sum(r["stopped_early"] == "False" and r["stop_step"] == "" for r in rows.values()) == 1
    res = runner.invoke(app, ["report", str(folder)])
    assert res.exit_code == 0, res.output
    html = (folder / "report" / "index.html").read_text()
    assert "2 of 3 images stopped before their budget at steps 100-100" in html
    assert "patience 100 steps" in html and ">at step 100<" in html


def test_resume_keeps_stopped_images_and_refuses_another_setting(tmp_path, toy_model, images):
    out = tmp_path / "a"
    (tmp_path / "data.csv").write_text("path\n" + "".join(f"{p}\n" for p in images))
    args = ["audit", str(toy_model), str(tmp_path / "data.csv"), "--out", str(out), *CLI_SMALL, "--early-stop",
            "--early-stop-patience", "100", "-k", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    before = (out / "results.jsonl").read_text()
    res = runner.invoke(app, args)  # resume: everything is done, nothing is inverted again
    assert res.exit_code == 0 and "3 already done, 0 scored now" in res.output
    assert (out / "results.jsonl").read_text() == before
    res = runner.invoke(app, args[:-5] + ["-k", "3"])  # the same run without --early-stop
    assert res.exit_code == 2 and "early_stop" in res.output and "made differently" in res.output
    res = runner.invoke(app, ["measure", str(toy_model), str(images[1]), *CLI_SMALL, "--early-stop",
                              "--early-stop-patience", "100"])
    assert res.exit_code == 0 and "100 stopped" in res.output and "--early-stop ended the inversion" in res.output


def test_each_repeat_stops_on_its_own(toy_model, images):
    results = []
    (summary,) = measure(str(toy_model), images[1:2], preset("ddpm", **SMALL, early_stop=True,
                                                             early_stop_patience=100),
                         repeats=2, batch_images=2, on_result=results.append)
    assert sorted(r.repeat for r in results) == [0, 1]
    assert [rep["early_stop"]["step"] for rep in summary.repeats] == [100, 100]
    assert all(r.early_stop["stopped"] and r.steps == 100 for r in results)
    assert results[0].image_seed != results[1].image_seed
    assert results[0].early_stop["best_similarity"] != results[1].early_stop["best_similarity"]


def test_estimate_predicts_the_saving_and_says_it_is_a_prediction(tmp_path, toy_model, images):
    (tmp_path / "data.csv").write_text(f"path\n{images[1]}\n")
    res = runner.invoke(app, ["estimate", str(toy_model), str(tmp_path / "data.csv"), "--similarity", "pixel",
                              "--early-stop",
                              "-k", "1", "--json-out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "with --early-stop (a prediction)" in res.output and "stops at step 500" in res.output
    e = json.loads((tmp_path / "e.json").read_text())["early_stop"]
    # the ddpm preset: 2,000 steps of B = 32 (a backward = 2 forwards) and a one-sample failing check of 200 DDIM
    # steps every 50, against 500 steps with 10 checks and an examination of 32 samples; the map's 15 in both
    assert e["stop_step"] == 500 and e["calls"]["opt_forward"] == 500 * 32
    assert e["calls"]["stop_forward"] == 32 * 200 and e["calls"]["check_forward"] == 10 * 200
    assert e["fewer_calls_per_stopped_image"] == pytest.approx(
        (2000 * 32 * 3 + 40 * 200 + 15 * 200) / (500 * 32 * 3 + 10 * 200 + 32 * 200 + 15 * 200), rel=1e-9)
    assert "prediction" in e["prediction"]


@pytest.mark.covered  # benchmarks/early_stop.py: 18 reproduced digits, 7 of them after step 1,400, none stopped
def test_a_late_reproduced_digit_is_not_stopped(toy_model, tmp_path):
    """A 4-copy digit that the default budget reproduces late (step 1,400 at seed 0) runs to its success with the
    default rule: it shows a sign of a copy, in its checks or its examination, by the patience."""
    from invmm.zoo.digits import export_images, load_manifest

    path = export_images(load_manifest(toy_model), tmp_path, ids=["digit-1129"])[0]
    (r,) = measure(str(toy_model), [path], preset("ddpm", similarity="pixel", early_stop=True), batch_images=1)
    # 1,400 in a batch of 8 (docs/benchmarks/early-stopping.md); alone its rows round differently, so a range
    assert r.success and 1000 < r.steps <= 2000 and not r.early_stop["stopped"]
    assert r.early_stop["first_sign"] is not None or r.early_stop["exams"][0][1] > 0


def test_with_the_refinement_and_a_mask_a_stopped_image_is_inf_in_both_scores(tmp_path, toy_model, images):
    import numpy as np
    from PIL import Image

    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "left.png")
    (r,) = measure(str(toy_model), images[1:2], preset("ddpm", **SMALL, early_stop=True, early_stop_patience=100,
                                                        refine=True), mask=tmp_path / "left.png", batch_images=1)
    assert r.early_stop["stopped"] and r.steps == 100 and r.measured_on == "mask"
    assert math.isinf(r.score) and math.isinf(r.refined_score) and r.refined_success is None


def test_parts_stop_as_the_whole_does_and_merge_keeps_their_records(tmp_path, toy_model, images):
    (tmp_path / "data.csv").write_text("path\n" + "".join(f"{p}\n" for p in images))
    common = [str(toy_model), str(tmp_path / "data.csv"), *CLI_SMALL, "--early-stop", "--early-stop-patience", "100",
              "-k", "2"]
    for i in (1, 2):
        res = runner.invoke(app, ["audit", *common, "--out", str(tmp_path / f"p{i}"), "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    merged = {r.id: r.early_stop for r in Ledger(tmp_path / "m").read()}
    assert len(merged) == 3 and sum(e["stopped"] for e in merged.values()) == 2
    assert all(e["step"] == 100 for e in merged.values() if e["stopped"])


def test_evaluate_passes_early_stop_to_its_invmm_scorer(tmp_path, toy_model, images):
    """`evaluate --early-stop`: the invmm scorer's stopped image scores inf, and its details say that it stopped
    (the scorer spec's options, invmm:early_stop=true,..., reach the same config through build_scorer)."""
    from invmm.runs.scores import read_scores

    (tmp_path / "labels.csv").write_text(f"path,label\n{images[0]},memorized\n{images[1]},heldout\n")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e"), "--model", str(toy_model), "--data",
                              str(tmp_path / "labels.csv"), *CLI_SMALL, "--positive", "memorized", "--bootstrap", "10",
                              "--scorers", "invmm", "--early-stop", "--early-stop-patience", "100"])
    assert res.exit_code == 0, res.output
    records = {r.label: r for r in read_scores(tmp_path / "e")}
    held_out = records["heldout"]
    assert math.isinf(held_out.score) and held_out.details["early_stop"]["stopped"]
    assert held_out.details["steps"] == 100 and not records["memorized"].details["early_stop"]["stopped"]
