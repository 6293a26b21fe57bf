import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from invmm.analysis.evaluate import choose_labels
from invmm.cli import app
from invmm.data.datasets import load_dataset
from invmm.errors import InvMMInputError
from invmm.runs.scores import read_scores

runner = CliRunner()
SCORERS = "invmm:max_steps=150,sampler_steps=50,map_samples=0;loss:n_draws=2;pia;secmi;generate_compare:n_samples=16"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, toy_model):
    """A 64-copy digit (memorized) and two held-out digits (heldout), a folder per label."""
    from invmm.zoo.digits import export_images, load_manifest

    root = tmp_path_factory.mktemp("labelled") / "images"
    manifest = load_manifest(toy_model)
    export_images(manifest, root / "memorized", ids=["digit-1742"])
    export_images(manifest, root / "heldout", ids=["digit-1032", "digit-1694"])
    # The same images as a manifest whose ids are the file names (ids seed each image's random stream).
    rows = [f"{p.relative_to(root.parent)},{p.parent.name},{p.name}\n" for p in sorted(root.rglob("*.png"))]
    (root.parent / "labels.csv").write_text("path,label,id\n" + "".join(rows))
    return root


@pytest.mark.slow
def test_evaluate_scores_once_then_reuses_and_matches_sklearn(tmp_path, toy_model, labelled):
    run = tmp_path / "run"
    data = labelled.parent / "labels.csv"
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(toy_model), "--data", str(data),
                              "--scorers", SCORERS, "--positive", "memorized", "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    records = read_scores(run)
    assert len(records) == 3 * 5 and {r.label for r in records} == {"memorized", "heldout"}
    info = json.loads((run / "run.json").read_text())
    assert info["scorers"]["invmm"]["config"]["max_steps"] == 150 and info["scorers"]["pia"]["t"] == 200

    out = run / "evaluation" / "memorized-vs-heldout"
    rows = {r["scorer"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"invmm", "loss", "pia", "secmi", "generate_compare"}
    for name, row in rows.items():
        mine = [r for r in records if r.scorer == name]
        y = [r.label == "memorized" for r in mine]
        s = np.array([r.score for r in mine])
        s = np.where(np.isinf(s), 1e9, s)  # sklearn refuses inf; +inf = not reproduced ranks last
        sign = 1 if row["direction"] == "higher" else -1
        assert float(row["auc"]) == pytest.approx(roc_auc_score(y, sign * s))
        assert float(row["auc_lo"]) <= float(row["auc"]) <= float(row["auc_hi"])
    # The planted duplicates are reproduced by both extraction-type scores.
    assert float(rows["invmm"]["auc"]) == 1.0 and float(rows["generate_compare"]["auc"]) == 1.0
    assert (out / "roc.png").stat().st_size > 10_000 and (out / "histograms.png").stat().st_size > 10_000
    assert "AUC [95% CI]" in res.output

    # Second call: nothing is recomputed; an added scorer computes only its own scores.
    before = (run / "scores.jsonl").read_text()
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(toy_model), "--data", str(data),
                              "--scorers", SCORERS, "--positive", "memorized", "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    assert (run / "scores.jsonl").read_text() == before
    # Evaluation alone, from the run folder.
    res = runner.invoke(app, ["evaluate", str(run), "--positive", "heldout", "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    assert (run / "evaluation" / "heldout-vs-memorized" / "summary.csv").exists()
    # Other settings for a scorer already in the folder are refused, naming what changed.
    res = runner.invoke(app, ["evaluate", str(run), "--model", str(toy_model), "--data", str(data),
                              "--scorers", "pia:t=100", "--positive", "memorized"])
    assert res.exit_code == 2 and "pia" in res.output and "t" in res.output
    assert (run / "scores.jsonl").read_text() == before


def test_bad_labelled_input_is_a_clear_error(tmp_path, toy_model, labelled):
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r"), "--model", str(toy_model), "--data",
                              str(labelled), "--scorers", "pia", "--positive", "members"])
    assert res.exit_code == 2 and "members" in res.output and "heldout, memorized" in res.output
    assert not (tmp_path / "r").exists()
    with pytest.raises(InvMMInputError, match="--positive"):
        choose_labels(["cat", "dog", "cat"], None, None)  # neither label looks positive
    assert choose_labels(["heldout", "memorized"], None, None).name == "memorized-vs-heldout"
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r2"), "--model", str(toy_model), "--data",
                              str(labelled), "--scorers", "noise_norm"])
    assert res.exit_code == 2 and "text conditioning" in res.output
    assert not (tmp_path / "r2").exists()  # refused before anything was written
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "run.json" in res.output


def test_manifests(tmp_path, labelled):
    files = sorted(labelled.rglob("*.png"))
    (tmp_path / "m.csv").write_text("path,label,caption\n" + "".join(
        f"{f},{f.parent.name},a digit\n" for f in files) + "missing.png,heldout,\n")
    items = load_dataset(tmp_path / "m.csv", labelled=True)
    assert [it.label for it in items[:3]] == [f.parent.name for f in files]
    assert items[0].caption == "a digit" and items[-1].error and "no such file" in items[-1].error
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(files[0]), "label": "x", "id": "a"}) + "\n{oops\n")
    with pytest.raises(InvMMInputError, match="line 2 is not valid JSON"):
        load_dataset(tmp_path / "m.jsonl")
    (tmp_path / "n.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(InvMMInputError, match="'path' column"):
        load_dataset(tmp_path / "n.csv")
    (tmp_path / "u.csv").write_text(f"path\n{files[0]}\n")
    with pytest.raises(InvMMInputError, match="no label"):
        load_dataset(tmp_path / "u.csv", labelled=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(files[0], flat / "x.png")
    with pytest.raises(InvMMInputError, match="subfolder per label"):
        load_dataset(flat, labelled=True)
