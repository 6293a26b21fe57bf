import json
import math
import os
import signal
from pathlib import Path

import pytest
from same_results import assert_same_runs
from typer.testing import CliRunner

from invmm.cli import app
from invmm.store.files import Ledger
from invmm.store.lock import RunLock

runner = CliRunner()
# the memorization map (tested in test_partial.py, test_matrix.py and test_cost.py; it changes no score) is left out
FAST = ["--max-steps", "20", "--check-every", "10", "--sampler-steps", "5", "--batch-size", "8", "-k", "4",
        "--map-samples", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, toy_model):
    """32 toy digits (8 of them duplicated 64 times) and a manifest with labels and captions."""
    from invmm.zoo.digits import export_images, load_manifest, select_images

    root = tmp_path_factory.mktemp("audit-data")
    manifest = load_manifest(toy_model)
    chosen = select_images(manifest, {64: 8, 1: 12, 0: 12})
    paths = export_images(manifest, root / "images", ids=[e["id"] for e in chosen])
    lines = ["path,label,caption"]
    for p, e in zip(paths, chosen):
        label = "memorized" if e["copies"] == 64 else "other"
        lines.append(f"images/{p.name},{label},digit {e['id']}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    # 4 of each group: a small audit for the Ray backend's comparison
    small = [lines[0]] + [line for k in (0, 8, 20) for line in lines[1 + k : 5 + k]]
    (root / "small.csv").write_text("\n".join(small) + "\n")
    return root


def scores(run):
    return {(r.id, r.repeat): (r.status, r.score, r.steps) for r in Ledger(run).read()}


@pytest.mark.slow
def test_bad_files_are_recorded_and_the_rest_scored(tmp_path, toy_model, dataset):
    data = tmp_path / "data"
    data.mkdir()
    good = sorted((dataset / "images").glob("*.png"))[:18]
    for p in good:
        (data / p.name).write_bytes(p.read_bytes())
    (data / "text.png").write_text("not an image")
    (data / "truncated.png").write_bytes(good[0].read_bytes()[:40])
    res = runner.invoke(app, ["audit", str(toy_model), str(data), "--out", str(tmp_path / "run"), *FAST])
    assert res.exit_code == 2, res.output  # input errors: reported, everything else scored
    recs = {r.id: r for r in Ledger(tmp_path / "run").read()}
    assert len(recs) == 20 and sum(r.status == "ok" for r in recs.values()) == 18
    assert "not an image" in recs["text.png"].error and recs["truncated.png"].status == "error"
    assert "2 errors" in res.output


def test_a_report_with_no_finite_score_draws_no_empty_histogram(tmp_path, toy_model, dataset):
    """Fails before the fix: the report drew an empty histogram frame under the sentence that nothing was drawn."""
    (tmp_path / "two").mkdir()
    for p in sorted((dataset / "images").glob("*.png"))[:2]:
        (tmp_path / "two" / p.name).write_bytes(p.read_bytes())
    res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "two"), "--out", str(tmp_path / "run"),
                              "--max-steps", "2", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "2",
                              "--threshold", "2", "--map-samples", "0"])
    assert res.exit_code == 0, res.output
    assert all(math.isinf(r.score) for r in Ledger(tmp_path / "run").read())
    assert runner.invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "0 finite scores drawn; 2 images scored +inf" in page
    assert "histogram of InvMM scores" not in page and not (tmp_path / "run" / "report" / "histogram.png").exists()


def test_artifact_names_are_injective_over_suffix_separator_and_case():
    from invmm.store.artifacts import artifact_stem

    ids = ["cat.png", "cat.jpg", "cat", "a/cat.png", "a_cat.png", "a\\cat.png", "a cat.png", "Cat.png", "CAT.PNG",
           "a/b/cat.png", "a_b/cat.png", "x" * 300 + ".png", "x" * 300 + ".jpg"]
    stems = [artifact_stem(Path("run"), i) for i in ids]
    names = {s.name.lower() for s in stems}  # distinct on a case-insensitive file system too
    assert len(names) == len(ids) and all(s.parent == Path("run/images") and "." not in s.name for s in stems)
    assert artifact_stem(Path("run"), "cat.png", 2).name.endswith(".r2")


def _first_tile(png_path, side=8):
    """The target tile of a run's check picture (the first, upscaled by nearest neighbour), as 8-bit pixels."""
    import numpy as np
    from PIL import Image

    canvas = np.asarray(Image.open(png_path).convert("L"))
    scale = canvas.shape[0] // side
    return canvas[: side * scale : scale, : side * scale : scale]


def test_images_whose_ids_differ_in_suffix_or_separator_keep_their_own_files_and_old_runs_resume(
        tmp_path, toy_model, dataset):
    """Fails before the fix: cat.png and cat.jpg, a/cat.png and a_cat.png wrote the same files."""
    import numpy as np
    from PIL import Image

    from invmm.store.artifacts import ARTIFACT_SUFFIXES, artifact_stem, legacy_stem

    sources = sorted((dataset / "images").glob("*.png"))[:4]
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    names = {"cat.png": sources[0], "cat.jpg": sources[1], "a/cat.png": sources[2], "a_cat.png": sources[3]}
    for name, src in names.items():
        Image.open(src).save(data / name, format="PNG" if name.endswith("png") else "BMP")  # lossless both ways
    args = ["audit", str(toy_model), str(data), "--out", str(tmp_path / "run"), "--max-steps", "2", "--check-every",
            "2", "--sampler-steps", "2", "--batch-size", "2", "--map-samples", "0", "--threshold", "-1"]
    assert runner.invoke(app, args).exit_code == 0
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["artifact_names"] == 2
    for name, src in names.items():
        np.testing.assert_array_equal(_first_tile(f"{artifact_stem(run, name)}.png"), np.asarray(Image.open(src)))
    assert len(list((run / "images").glob("*.safetensors"))) == 4

    # A run as invmm wrote it before: files under the old names, no "artifact_names" in run.json. Without shared
    # names its resume renames the files; the report finds them either way.
    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    for f in ("run.json", "results.jsonl"):
        (old / f).write_bytes((run / f).read_bytes())
    info = json.loads((old / "run.json").read_text())
    info.pop("artifact_names")
    (old / "run.json").write_text(json.dumps(info))
    for name in ("cat.png", "a/cat.png"):  # their old names differ (cat.*, a_cat.* clashed with the others)
        for suffix in ARTIFACT_SUFFIXES[:2]:
            Path(f"{artifact_stem(run, name)}{suffix}").rename(f"{legacy_stem(old, name)}{suffix}")
    lines = [ln for ln in (old / "results.jsonl").read_text().splitlines() if json.loads(ln)["id"] in
             ("cat.png", "a/cat.png")]
    (old / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["report", str(old)]).exit_code == 0
    assert (old / "report" / "index.html").read_text().count("alt='target and check samples' src='data") == 2
    res = runner.invoke(app, [*args[:4], str(old), *args[5:]])
    assert res.exit_code == 0, res.output
    assert json.loads((old / "run.json").read_text())["artifact_names"] == 2
    for name in ("cat.png", "a/cat.png"):
        np.testing.assert_array_equal(_first_tile(f"{artifact_stem(old, name)}.png"),
                                      np.asarray(Image.open(names[name])))
    # An old run where two images shared files: refused, naming both, nothing touched.
    clash = tmp_path / "clash"
    (clash / "images").mkdir(parents=True)
    (clash / "run.json").write_text(json.dumps(info))
    (clash / "results.jsonl").write_bytes((run / "results.jsonl").read_bytes())
    for suffix in ARTIFACT_SUFFIXES[:2]:
        Path(f"{artifact_stem(run, 'cat.jpg')}{suffix}").rename(f"{legacy_stem(clash, 'cat.jpg')}{suffix}")
    before = sorted(p.name for p in (clash / "images").iterdir())
    res = runner.invoke(app, [*args[:4], str(clash), *args[5:]])
    assert res.exit_code == 2 and "'cat.jpg' and 'cat.png' wrote the same files" in res.output, res.output
    assert sorted(p.name for p in (clash / "images").iterdir()) == before


def test_second_writer_and_changed_config_are_refused(tmp_path, toy_model, dataset):
    run = tmp_path / "run"
    data = tmp_path / "two"
    data.mkdir()
    for name in ("digit-1742.png", "digit-1032.png"):
        (data / name).write_bytes((dataset / "images" / name).read_bytes())
    args = ["audit", str(toy_model), str(data), "--out", str(run), *FAST]
    with RunLock(run):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "in use by another audit" in res.output
    assert not (run / "results.jsonl").exists()
    assert runner.invoke(app, args).exit_code == 0
    before = (run / "results.jsonl").read_text()
    res = runner.invoke(app, [*args[:-len(FAST)], *FAST[:-4], "--max-steps", "30", "-k", "4"])
    assert res.exit_code == 2 and "max_steps: 20 -> 30" in res.output and "--force-new" in res.output
    assert (run / "results.jsonl").read_text() == before
    res = runner.invoke(app, [*args, "--force-new"])
    assert res.exit_code == 0 and (tmp_path / "run-2" / "results.jsonl").exists()


CAPTION = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def audited(tmp_path_factory, toy_model, dataset):
    """One audit of the 32 images, the first caption made of markup, for the tests that read a finished run."""
    root = tmp_path_factory.mktemp("audited")
    lines = (dataset / "data.csv").read_text().splitlines()
    lines = [lines[0]] + [ln.replace("images/", str(dataset / "images") + "/") for ln in lines[1:]]
    lines[1] = lines[1].rsplit(",", 1)[0] + "," + CAPTION
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    run = root / "run"
    assert runner.invoke(app, ["audit", str(toy_model), str(root / "data.csv"), "--out", str(run),
                               *FAST]).exit_code == 0
    return run


@pytest.mark.slow
def test_export_csv_and_parquet(tmp_path, audited):
    import csv

    import pyarrow.parquet as pq

    run = audited
    assert runner.invoke(app, ["export", str(run), "--format", "csv"]).exit_code == 0
    assert runner.invoke(app, ["export", str(run), "--format", "parquet"]).exit_code == 0
    recs = {r.id: r for r in Ledger(run).read()}
    rows = list(csv.DictReader(open(run / "results.csv")))
    table = pq.read_table(run / "results.parquet").to_pylist()
    assert len(rows) == len(table) == 32
    for row, trow in zip(rows, table):
        r = recs[row["id"]]
        assert float(row["score"]) == r.score == trow["score"] or (math.isinf(r.score) and row["score"] == "inf")
        assert row["label"] == r.label == trow["label"] and row["caption"] == r.caption
    assert CAPTION in {row["caption"] for row in rows}  # markup in a caption round-trips as text
    assert runner.invoke(app, ["export", str(tmp_path / "nope")]).exit_code == 2


@pytest.mark.slow
def test_report_is_self_contained_escaped_and_renders(tmp_path, audited):
    run = audited
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report" / "index.html").read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert" not in page and "<b>bold" not in page
    assert "http://" not in page and "https://" not in page and "src='data:image/png;base64," in page
    assert "Evaluation by label: memorized vs other" in page  # labels exist: the ROC section
    finite = any(math.isfinite(r.score) for r in Ledger(run).read())
    assert (run / "report" / "histogram.png").exists() == finite and (run / "report" / "roc.png").exists()
    assert len(list(open(run / "report" / "images.csv"))) == 33

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("headless Chromium not installed (Debian package chromium); benchmarks/audit_scale.py renders it")
    from invmm.report.browser import render

    shot = tmp_path / "shot.png"
    dom, console = render(run / "report" / "index.html", shot)
    assert shot.stat().st_size > 20_000
    assert "data-ready=\"yes\"" in dom  # the sorting script ran to its end
    assert not [c for c in console if "error" in c.lower() or "uncaught" in c.lower()], console


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_backend_equals_local_and_survives_killed_workers(tmp_path, toy_model, dataset, ray_cluster):
    from invmm.config import preset
    from invmm.data.datasets import load_dataset
    from invmm.runs.audit import audit

    ray = ray_cluster
    cfg = preset("ddpm", similarity="pixel", max_steps=20, check_every=10, sampler_steps=5, batch_size=8)
    items = lambda: load_dataset(dataset / "small.csv")  # noqa: E731 (fresh items: audits free their pixels)
    audit(str(toy_model), items(), cfg, tmp_path / "local", batch_images=4)

    pids: list[int] = []
    killed: list[int] = []

    def on_workers(actors):
        if not pids:  # the first pool; replacements are left alone
            pids[:] = ray.get([a.pid.remote() for a in actors])

    def on_result(res):
        if not killed:  # kill every worker once, mid-run: their in-flight batches must be retried
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    summary = audit(str(toy_model), items(), cfg, tmp_path / "ray", backend="ray", batch_images=4,
                    on_workers=on_workers, on_result=on_result)
    assert killed and summary.errors == 0 and summary.scored == 12
    assert_same_runs(Ledger(tmp_path / "local").read(), Ledger(tmp_path / "ray").read(), what="ray")
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert info["sessions"][0]["workers"] == 2 and info["backend"] == "ray"


@pytest.mark.slow
def test_ray_screen_equals_local(tmp_path, toy_model, dataset, ray_cluster):
    """The screen stage on Ray Data (an actor pool of the cheap scorer) writes the local screen's records."""
    import webdataset as wds

    from invmm.data.datasets import load_dataset
    from invmm.families import load_adapter
    from invmm.runs.screen import run_screen

    adapter = load_adapter(str(toy_model))
    items = load_dataset(dataset / "data.csv")
    (tmp_path / "broken.png").write_bytes(b"not a png")  # an unreadable file gets an error record
    items.append(type(items[0])(id="broken", path=str(tmp_path / "broken.png"), label="other"))
    # the actors read shard members by offset, as the local screen does
    with wds.TarWriter(str(tmp_path / "s.tar")) as tar:
        for i, p in enumerate(sorted((dataset / "images").glob("*.png"))[:6]):
            tar.write({"__key__": f"k{i}", "png": p.read_bytes(), "txt": "a digit"})
    shard_items = load_dataset(tmp_path / "s.tar")
    items += shard_items
    local = run_screen(adapter, items, "loss", tmp_path / "local", keep=0.25)
    remote = run_screen(adapter, items, "loss", tmp_path / "ray", keep=0.25, ray={"workers": 2})
    assert [it.id for it in remote.kept] == [it.id for it in local.kept]
    assert len(remote.records) == len(items) == 39
    assert all(remote.records[it.id].status == "ok" for it in shard_items)
    for i, r in local.records.items():
        assert (remote.records[i].status, remote.records[i].label) == (r.status, r.label)
        if r.status == "ok":
            assert remote.records[i].score == pytest.approx(r.score, rel=1e-5)
    assert remote.records["broken"].status == "error" and "broken.png" in remote.records["broken"].error


@pytest.mark.slow
def test_ray_runs_the_sampled_design_as_the_local_audit_does(tmp_path, toy_model, dataset, ray_cluster):
    """The design (the screen's top K and a random sample of the rest) is chosen before the backend runs it: on Ray
    the same images are inverted with the same results, and run.json holds the same design."""
    from invmm.config import preset
    from invmm.data.datasets import load_dataset
    from invmm.runs.audit import audit

    cfg = preset("ddpm", similarity="pixel", max_steps=20, check_every=10, sampler_steps=5, batch_size=8)
    runs = {}
    for backend in ("local", "ray"):
        audit(str(toy_model), load_dataset(dataset / "small.csv"), cfg, tmp_path / backend, screen="loss",
              keep_top=2, sample=3, batch_images=4, **({"backend": "ray"} if backend == "ray" else {}))
        runs[backend] = json.loads((tmp_path / backend / "run.json").read_text())["design"]
    assert runs["ray"] == runs["local"]
    assert runs["local"]["census"]["n"] == 2 and len(runs["local"]["sample"]["ids"]) == 3
    assert len(Ledger(tmp_path / "local").read()) == 5
    assert_same_runs(Ledger(tmp_path / "local").read(), Ledger(tmp_path / "ray").read(), what="ray")
