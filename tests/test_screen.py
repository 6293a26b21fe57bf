"""Screen, then invert: the cheap scorer's ranking decides what InvMM audits."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from invmm.cli import app
from invmm.data.datasets import load_dataset
from invmm.data.images import load_image
from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.runs.scores import ScoreRecord
from invmm.runs.screen import n_kept, suspicion_order
from invmm.scorers import LossScorer
from invmm.store.files import Ledger

runner = CliRunner()
FAST = ["--max-steps", "20", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "8", "--map-samples", "0"]


def rec(i, score, status="ok"):
    return ScoreRecord(id=f"x{i}", scorer="loss", score=score, status=status)


def test_suspicion_order_follows_the_scorer_direction_and_puts_unscored_first():
    records = [rec(0, 0.5), rec(1, 0.1), rec(2, math.nan, "error"), rec(3, 0.9)]
    assert [r.id for r in suspicion_order(records, higher_is_better=True)] == ["x2", "x3", "x0", "x1"]
    assert [r.id for r in suspicion_order(records, higher_is_better=False)] == ["x2", "x1", "x0", "x3"]


def test_how_many_are_kept():
    assert n_kept(424, 0.1, None) == 43 and n_kept(10, 0.01, None) == 1 and n_kept(10, None, 25) == 10
    for keep, top in ((None, None), (0.1, 5), (1.5, None), (None, 0)):
        with pytest.raises(InvMMInputError):
            n_kept(10, keep, top)


@pytest.fixture(scope="module")
def data(tmp_path_factory, toy_model):
    from invmm.zoo.digits import export_images, load_manifest, select_images

    root = tmp_path_factory.mktemp("screen-data")
    manifest = load_manifest(toy_model)
    chosen = select_images(manifest, {64: 4, 0: 12})
    export_images(manifest, root, ids=[e["id"] for e in chosen])
    return root


def test_audit_inverts_only_what_the_screen_ranks_first(tmp_path, toy_model, data):
    out = tmp_path / "run"
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(out), "--screen", "loss",
                              "--keep", "0.25", *FAST])
    assert res.exit_code == 0, res.output
    assert "screen loss: 4 of 16 images kept" in res.output
    # The kept images are the 4 lowest losses, computed here independently with the same scorer and seed.
    adapter = load_adapter(str(toy_model))
    items = [load_image(it, mode="L", size=8) for it in load_dataset(data)]
    losses = LossScorer(adapter).score(torch.stack([it.pixels for it in items]), [it.id for it in items], seed=0)
    expected = {it.id for _, it in sorted(zip(losses, items), key=lambda p: p[0])[:4]}
    assert {r.id for r in Ledger(out).read()} == expected
    info = json.loads((out / "run.json").read_text())
    assert info["screen"]["kept"] == 4 and info["screen"]["of"] == 16 and info["dataset"]["n"] == 4
    assert (out / "screen" / "scores.jsonl").read_text().count("\n") == 16

    again = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(out), "--screen", "loss",
                                "--keep", "0.25", *FAST])
    assert again.exit_code == 0 and "4 already done, 0 scored now" in again.output

    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    page = (out / "report" / "index.html").read_text()
    assert "Screen: loss" in page and "InvMM skipped 12 images" in page


@pytest.mark.parametrize("extra, message", [
    (["--keep", "0.5"], "give --screen"),
    (["--screen", "invmm", "--keep", "0.5"], "takes a one-pass scorer"),
    (["--screen", "anisotropy", "--keep", "0.5"], "'anisotropy' is not one"),
    (["--screen", "loss", "--keep", "1.5"], "fraction"),
    (["--screen", "nosuch", "--keep", "0.5"], "unknown scorer"),
])
def test_bad_screen_options_exit_2(tmp_path, toy_model, data, extra, message):
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(tmp_path / "r"), *extra, *FAST])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "r" / "results.jsonl").exists()
