"""Is this model safe to ship? The sampled audit's design through the commands (unsharded and in parts, resumed),
and `invmm assess`'s statement, bounds and exit codes on ledgers built to know the truth."""

import json
import math

import pytest
from typer.testing import CliRunner

from invmm.analysis.population import count_lower, count_upper
from invmm.cli import app
from invmm.data.sampling import draw
from invmm.records import InversionRecord
from invmm.store.files import Ledger, atomic_write_json

runner = CliRunner()
# every check passes (threshold -1): a short audit whose images are all "reproduced", no map
FAST = ["--max-steps", "2", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2", "-k", "8",
        "--threshold", "-1", "--map-samples", "0"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, toy_model):
    """24 toy digits in a folder."""
    from invmm.zoo.digits import export_images, load_manifest, select_images

    root = tmp_path_factory.mktemp("assess-data")
    manifest = load_manifest(toy_model)
    chosen = select_images(manifest, {64: 8, 1: 8, 0: 8})
    export_images(manifest, root, ids=[e["id"] for e in chosen])
    return root


def test_the_sample_is_drawn_by_id_the_same_in_parts_merged_as_unsharded_and_kept_on_resume(tmp_path, toy_model,
                                                                                           digits):
    base = ["audit", str(toy_model), str(digits), *FAST, "--screen", "loss", "--keep-top", "4", "--sample", "6"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    design = json.loads((tmp_path / "all" / "run.json").read_text())["design"]
    ids = sorted(p.name for p in digits.glob("*.png"))
    assert design["population"] == 24 and design["census"]["kind"] == "screen top K"
    census = design["census"]["ids"]
    assert len(census) == 4 and design["sample"]["m"] == 6 and design["sample"]["frame"] == 20
    assert design["sample"]["ids"] == draw(ids, 6, 0, exclude=census)  # the seeded hash of the ids
    assert {r.id for r in Ledger(tmp_path / "all").read()} == set(census) | set(design["sample"]["ids"])

    for i in (1, 2):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / f"p{i}"), "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "m" / "run.json").read_text())["design"]
    assert merged["census"]["ids"] == census and merged["sample"]["ids"] == design["sample"]["ids"]
    assert {r.id for r in Ledger(tmp_path / "m").read()} == set(census) | set(design["sample"]["ids"])
    res = runner.invoke(app, ["assess", str(tmp_path / "p1")])
    assert res.exit_code == 2 and "assess the merged run" in res.output

    # Resume: an interrupted run gets exactly its missing sample images; another --sample is refused.
    lines = (tmp_path / "all" / "results.jsonl").read_text().splitlines()
    (tmp_path / "all" / "results.jsonl").write_text("\n".join(lines[:5]) + "\n")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "all")])
    assert res.exit_code == 0 and "5 already done" in res.output, res.output
    assert sorted(r.id for r in Ledger(tmp_path / "all").read()) == sorted(set(census) | set(design["sample"]["ids"]))
    res = runner.invoke(app, [*base[:-1], "7", "--out", str(tmp_path / "all")])
    assert res.exit_code == 2 and "design" in res.output and "sample" in res.output

    # Without a screen: a plain random sample of the whole, parts merged to the same sample.
    plain = ["audit", str(toy_model), str(digits), *FAST, "--sample", "5"]
    assert runner.invoke(app, [*plain, "--out", str(tmp_path / "s")]).exit_code == 0
    for i in (1, 2):
        assert runner.invoke(app, [*plain, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"]).exit_code == 0
    assert runner.invoke(app, ["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out",
                               str(tmp_path / "sm")]).exit_code == 0
    whole = json.loads((tmp_path / "s" / "run.json").read_text())["design"]
    assert whole["sample"]["ids"] == draw(ids, 5, 0) and whole["census"]["n"] == 0
    assert json.loads((tmp_path / "sm" / "run.json").read_text())["design"]["sample"]["ids"] == whole["sample"]["ids"]
    res = runner.invoke(app, ["assess", str(tmp_path / "s"), "--json"])
    out = json.loads(res.stdout)
    assert out["sample"] == {"n": 5, "reproduced": 5, "unknown": 0, "frame": 24}  # every check passes: all reproduced
    assert out["estimate"]["count"] == 24 and out["estimate"]["upper"] == 24
    assert out["estimate"]["lower"] == count_lower(5, 5, 24)


def _run(folder, population, census_ids, sample_ids, reproduced, *, kind="screen top K", errors=(), repeats=1):
    """A run folder whose design and ledger are given: `reproduced` ids succeed (in repeat 0 only), `errors` are
    input errors; the others run their budget."""
    folder.mkdir(parents=True)
    design = {"population": population, "seed": 0, "population_ids_sha256": "x",
              "census": {"kind": kind, "n": len(census_ids) if kind != "everything" else population,
                         **({"ids": sorted(census_ids)} if kind == "screen top K" else {})},
              "sample": {"m": len(sample_ids), "frame": population - len(census_ids), "ids": list(sample_ids)}
              if sample_ids else None}
    atomic_write_json(folder / "run.json", {"kind": "audit", "design": design, "repeats": repeats, "seed": 0,
                                            "config": {"max_steps": 2000, "preset": "ddpm", "similarity": "sscd",
                                                       "beta": 0.5}})
    ledger = Ledger(folder)
    (folder / "results.jsonl").touch()
    for i in [*census_ids, *sample_ids]:
        for r in range(repeats):
            if i in errors:
                ledger.append(InversionRecord(id=i, path="", status="error", error="unreadable", error_kind="input",
                                              repeat=r))
                continue
            ok = i in reproduced and r == 0
            ledger.append(InversionRecord(id=i, path="", score=0.3 + 0.01 * len(i) if ok else math.inf, success=ok,
                                          steps=2000, repeat=r, calls={"opt_forward": 64_000, "opt_backward": 64_000}))


def test_assess_decides_go_no_go_and_undecided_with_exit_codes(tmp_path):
    census = [f"top{i}" for i in range(50)]
    sample = [f"s{i}" for i in range(400)]
    _run(tmp_path / "go", 30_000, census, sample, {"top1", "top2"})
    res = runner.invoke(app, ["assess", str(tmp_path / "go"), "--max-rate", "0.01", "--json-out",
                              str(tmp_path / "go.json")])
    assert res.exit_code == 0, res.output
    j = json.loads((tmp_path / "go.json").read_text())
    assert j["decision"] == "go" and j["population"] == 30_000
    assert j["census"] == {"n": 50, "reproduced": 2, "unknown": 0, "kind": "screen top K"}
    assert j["sample"] == {"n": 400, "reproduced": 0, "unknown": 0, "frame": 29_950}
    assert j["estimate"]["upper"] == 2 + count_upper(0, 400, 29_950) <= 300 and j["estimate"]["confidence"] == 0.95
    assert j["estimate"]["two_sided"][1] == 2 + count_upper(0, 400, 29_950, 0.975)
    assert j["policy"]["max_rate"] == 0.01 and j["budget"]["max_steps"] == 2000 and j["found"] == ["top1", "top2"]
    assert "With 95% confidence at most" in res.output and "found 2 (top1, top2)" in res.output
    assert "screen recall >=" in res.output

    res = runner.invoke(app, ["assess", str(tmp_path / "go"), "--max-rate", "0.01", "--max-count", "1"])
    assert res.exit_code == 1 and "no-go" in res.output  # more found than the policy allows

    _run(tmp_path / "nogo", 30_000, census, sample, {"top1", *sample[:40]})
    res = runner.invoke(app, ["assess", str(tmp_path / "nogo"), "--max-rate", "0.01", "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["decision"] == "no-go"

    _run(tmp_path / "maybe", 30_000, census, sample[:100], {"top1", "s3"})
    res = runner.invoke(app, ["assess", str(tmp_path / "maybe"), "--max-rate", "0.01", "--json"])
    assert res.exit_code == 3, res.output
    plan = json.loads(res.stdout)["plan"]
    assert plan["more"] > 0 and plan["decision"] in ("go", "no-go") and plan["forward_equivalents"] > 0
    res = runner.invoke(app, ["assess", str(tmp_path / "maybe"), "--max-rate", "0.01"])
    assert "more random images" in res.output and "undecided" in res.output
    res = runner.invoke(app, ["assess", str(tmp_path / "maybe"), "--max-rate", "2"])
    assert res.exit_code == 2 and "--max-rate" in res.output


def test_a_census_is_exact_and_a_screen_alone_bounds_from_below_only(tmp_path):
    everyone = [f"d{i}" for i in range(120)]
    _run(tmp_path / "census", 120, everyone, [], {"d3", "d7", "d9"}, kind="everything", errors={"d11"})
    res = runner.invoke(app, ["assess", str(tmp_path / "census"), "--json"])
    e = json.loads(res.stdout)["estimate"]
    assert res.exit_code == 0 and e["lower"] == 3 and e["upper"] == 4  # the unreadable one counts against it
    assert json.loads(res.stdout)["notes"]
    _run(tmp_path / "exact", 120, everyone, [], {"d3", "d7", "d9"}, kind="everything")
    j = json.loads(runner.invoke(app, ["assess", str(tmp_path / "exact"), "--json"]).stdout)
    assert j["estimate"]["count"] == j["estimate"]["lower"] == j["estimate"]["upper"] == 3
    assert j["estimate"]["two_sided"] == [3, 3] and "this is the exact count" in j["statement"]

    _run(tmp_path / "top", 5_000, everyone[:20], [], {"d3"})
    res = runner.invoke(app, ["assess", str(tmp_path / "top"), "--max-rate", "0.5", "--json"])
    j = json.loads(res.stdout)
    assert res.exit_code == 3 and j["decision"] == "undecided" and j["estimate"]["upper"] is None
    assert j["estimate"]["lower"] == 1 and "nothing bounds how many more" in j["statement"]


def test_with_repeats_an_image_counts_when_one_repeat_reproduces_it_and_a_score_cut_counts_fewer(tmp_path):
    census = [f"top{i}" for i in range(10)]
    _run(tmp_path / "r", 10, census, [], {"top1", "top22"}, kind="everything", repeats=3)
    j = json.loads(runner.invoke(app, ["assess", str(tmp_path / "r"), "--json"]).stdout)
    assert j["estimate"]["count"] == 1 and "in at least one of 3 repeats" in j["quantity"]
    j = json.loads(runner.invoke(app, ["assess", str(tmp_path / "r"), "--json", "--score-below", "0.1"]).stdout)
    assert j["estimate"]["count"] == 0 and "at a score <= 0.1" in j["quantity"]


def test_the_report_opens_with_the_assessment_and_the_table_marks_each_stratum(tmp_path, toy_model, digits):
    res = runner.invoke(app, ["audit", str(toy_model), str(digits), *FAST, "--screen", "loss", "--keep-top", "3",
                              "--sample", "4", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["report", str(tmp_path / "a"), "--max-rate", "0.5"]).exit_code == 0
    page = (tmp_path / "a" / "report" / "index.html").read_text()
    first = page.index("<h2>")
    assert page[first:].startswith("<h2>Is this model safe to ship?</h2>")
    assert "random sample of the rest</td><td>4 of 21 images, 4 reproduced" in page and "<td>decision</td><td>" in page
    assert page.count("<td data-v='sample'>sample</td>") == 4 and page.count("<td data-v='census'>census</td>") == 3
    assert runner.invoke(app, ["export", str(tmp_path / "a")]).exit_code == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a" / "results.csv")))
    assert sorted(r["stratum"] for r in rows) == ["census"] * 3 + ["sample"] * 4


def test_estimate_plans_the_sample_that_can_show_a_go(tmp_path, toy_model, digits):
    res = runner.invoke(app, ["estimate", str(toy_model), str(digits), "--max-steps", "10", "--max-rate", "0.25",
                              "--keep-top", "4", "--json-out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "e.json").read_text())["plan"]
    assert plan["population"] == 24 and plan["census"] == 4 and plan["rest"] == 20 and plan["allowed"] == 6
    m = plan["sample"]
    assert count_upper(0, m, 20) <= 6 < count_upper(0, m - 1, 20)  # the smallest sample that shows a go
    assert plan["hours_worst_case"] > 0 and f"random sample of {m} of the other 20" in res.output


def test_the_design_works_with_repeats_and_the_refinement(tmp_path, toy_model, digits):
    res = runner.invoke(app, ["audit", str(toy_model), str(digits), *FAST, "--sample", "3", "--repeats", "2",
                              "--refine", "--refine-samples", "8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    lines = Ledger(tmp_path / "r").read()
    design = json.loads((tmp_path / "r" / "run.json").read_text())["design"]
    assert sorted({r.id for r in lines}) == sorted(design["sample"]["ids"]) and len(lines) == 6
    j = json.loads(runner.invoke(app, ["assess", str(tmp_path / "r"), "--json"]).stdout)
    assert j["sample"]["n"] == 3 and "in at least one of 2 repeats" in j["quantity"]
