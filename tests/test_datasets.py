"""Datasets as auditors hold them: webdataset shards, img2dataset folders, Hugging Face datasets; parts and merge.

Every dataset is made here (webdataset's TarWriter, pyarrow, `datasets`): no network."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from same_results import assert_same_runs
from typer.testing import CliRunner

from invmm.cli import app
from invmm.config import InvMMConfig, check_captions
from invmm.data.datasets import load_dataset
from invmm.data.hf import Columns
from invmm.data.images import load_image
from invmm.data.reader import prefetch
from invmm.data.split import parse_shard, part_of, select_part
from invmm.errors import InvMMInputError
from invmm.store.files import Ledger

runner = CliRunner()
# no memorization map (tested in test_partial.py and test_matrix.py; it changes no score)
FAST = ["--max-steps", "4", "--check-every", "2", "--sampler-steps", "2", "--batch-size", "4", "-k", "4",
        "--threshold", "-1", "--map-samples", "0"]  # every check passes: finite scores to compare


def png(value: int, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64).reshape(8, 8) + value).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def expected_pixels(value: int) -> np.ndarray:
    return ((np.arange(64).reshape(8, 8) + value) / 127.5 - 1.0)[None]


def write_shards(root, n_shards=2, per=5, failed=(3,), samples=None):
    """img2dataset's layout: NNNNN.tar with KEY.png/.txt/.json, and NNNNN.parquet listing every url tried."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        rows = []
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as tar:
            for i in range(per):
                key = f"{s:05d}{i:04d}"
                if i in failed:
                    rows.append({"key": key, "status": "failed_to_download", "error_message": "HTTP 404"})
                    continue
                value = 10 * s + i
                tar.write({"__key__": key, "png": png(value), "txt": f"caption {value}",
                           "json": json.dumps({"url": f"https://x.invalid/{key}", "alt": f"alt {value}"})})
                rows.append({"key": key, "status": "success", "error_message": None})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{s:05d}.parquet")
    return root


def test_shards_list_ids_captions_metadata_and_pixels(tmp_path):
    items = load_dataset(write_shards(tmp_path / "s"))
    assert [it.id for it in items] == [f"{s:05d}/{s:05d}{i:04d}" for s in range(2) for i in (0, 1, 2, 4)]
    info = items.describe()
    assert info["kind"] == "shards" and info["shards"] == 2 and info["skipped"] == {"failed_to_download": 2}
    assert "HTTP 404" in info["skipped_examples"]["failed_to_download"] and not info["problems"]
    it = items[5]  # shard 1, key 1
    assert it.caption == "caption 11" and it.meta == {"url": "https://x.invalid/000010001", "alt": "alt 11"}
    np.testing.assert_allclose(load_image(it, mode="L", size=8).pixels.numpy(), expected_pixels(11), atol=1e-6)
    assert it.origin.endswith("00001.tar:000010001.png")
    by_key = load_dataset(tmp_path / "s", caption_key="alt", columns=Columns(label="url"))
    assert by_key[5].caption == "alt 11" and by_key[5].label == "https://x.invalid/000010001"


def test_a_tar_a_brace_pattern_and_a_folder_give_the_same_items(tmp_path):
    root = write_shards(tmp_path / "s")
    folder = load_dataset(root)
    pattern = load_dataset(f"{root}/{{00000..00001}}.tar")
    assert [(i.id, i.ref, i.caption) for i in pattern] == [(i.id, i.ref, i.caption) for i in folder]
    assert [i.id for i in load_dataset(root / "00001.tar")] == [i.id for i in folder[4:]]
    with pytest.raises(InvMMInputError, match="do not exist"):
        load_dataset(f"{root}/{{00000..00003}}.tar")
    # a Parquet beside a shard that is not img2dataset's (no key/status columns) is not read as its listing
    pq.write_table(pa.Table.from_pylist([{"caption": "x"}]), root / "00001.parquet")
    info = load_dataset(root).describe()
    assert info["skipped"] == {"failed_to_download": 1} and not info["problems"]


def test_shards_with_one_name_in_two_folders_keep_distinct_ids_and_a_repeated_shard_is_an_input_error(tmp_path):
    """Fails before the fix: a shard reached through a symlink fell back to its stem, so x/00000.tar and
    y/00000.tar gave the same ids, and shards never went through the duplicate-id check."""
    a, b = write_shards(tmp_path / "a", n_shards=1), write_shards(tmp_path / "b", n_shards=1, per=2, failed=())
    root = tmp_path / "links"
    for sub, real in (("x", a), ("y", b)):
        (root / sub).mkdir(parents=True)
        (root / sub / "00000.tar").symlink_to(real / "00000.tar")
    items = load_dataset(root)
    ids = [it.id for it in items]
    assert ids == ["x/00000/000000000", "x/00000/000000001", "x/00000/000000002", "x/00000/000000004",
                   "y/00000/000000000", "y/00000/000000001"]
    assert not any(it.error for it in items)
    plain = load_dataset(f"{tmp_path}/{{a,b}}/00000.tar")  # a brace pattern over two folders, no links
    assert [it.id for it in plain] == [i.replace("x/", "a/").replace("y/", "b/") for i in ids]
    twice = load_dataset(f"{a}/{{00000,00000}}.tar")  # the same shard listed twice
    first, again = twice[:4], twice[4:]
    assert [it.error for it in first] == [None] * 4
    assert all("its id repeats that of" in it.error for it in again) and len({it.id for it in twice}) == 8


def test_the_content_hash_covers_the_images_bytes(tmp_path):
    root = write_shards(tmp_path / "s", failed=())
    before = load_dataset(root)
    offset = int(before[2].ref.split(":")[1])
    with open(root / "00000.tar", "r+b") as f:  # one byte of one image changes; names and sizes do not
        f.seek(offset + 40)
        b = f.read(1)
        f.seek(offset + 40)
        f.write(bytes([b[0] ^ 1]))
    after = load_dataset(root)
    assert [i.id for i in after] == [i.id for i in before]
    assert after.describe()["content_sha256"] != before.describe()["content_sha256"]
    assert load_dataset(root).describe()["content_sha256"] == after.describe()["content_sha256"]


def test_bad_shard_data_is_recorded_with_shard_and_key(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with tarfile.open(root / "a.tar", "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("k1.png", png(1))
        add("k1.txt", b"one")
        add("k2.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")  # corrupt image
        add("k3.txt", b"caption without an image")
        add("k1.png", png(2))  # the same key again, after others
        add("k4.png", png(4))
        add("k5.png", png(5) * 20)  # the shard will be cut inside this one
    data = (root / "a.tar").read_bytes()
    cut = data.index(png(5)) + 30
    (root / "a.tar").write_bytes(data[:cut])
    items = {it.id: it for it in load_dataset(root)}
    assert items["a/k1"].error is None and items["a/k1"].caption == "one"
    assert items["a/k4"].error is None
    assert "no image member" in items["a/k3"].error and "a.tar:k3" in items["a/k3"].error
    assert "appears twice" in items["a/k1#duplicate"].error
    assert "ends inside this image" in items["a/k5"].error
    loaded = load_image(items["a/k2"], mode="L", size=8)
    assert loaded.pixels is None and "a.tar:k2.jpg" in loaded.error
    problems = load_dataset(root).describe()["problems"]
    assert len(problems) == 1 and "truncated" in problems[0] and "a.tar" in problems[0]


def _hf_dataset(n=6):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "uid": datasets.Value("string"),
                                  "member": datasets.ClassLabel(names=["nonmember", "member"])})
    return datasets.Dataset.from_dict(
        {"image": [Image.open(io.BytesIO(png(i))) for i in range(n)], "text": [f"c{i}" for i in range(n)],
         "uid": [f"u{i}" for i in range(n)], "member": [i % 2 for i in range(n)]}, features=features)


def test_hugging_face_saved_parquet_and_imagefolder(tmp_path):
    import datasets

    ds = _hf_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "p.parquet"))
    cols = Columns(id="uid", label="member")
    for source, kind in (("saved", "hf-saved"), ("p.parquet", "parquet")):
        items = load_dataset(tmp_path / source, columns=cols)
        assert items.kind == kind and [it.id for it in items] == [f"u{i}" for i in range(6)]
        assert items[3].caption == "c3" and items[3].label == "member"
        np.testing.assert_allclose(load_image(items[3], mode="L", size=8).pixels.numpy(), expected_pixels(3),
                                   atol=1e-6)
    assert [it.id for it in load_dataset(tmp_path / "saved")] == [str(i) for i in range(6)]  # rows without --id
    ds.select_columns(["image"]).save_to_disk(str(tmp_path / "images_only"))  # no column but the images
    only = load_dataset(tmp_path / "images_only")
    assert [it.id for it in only] == [str(i) for i in range(6)] and only[4].caption is None
    np.testing.assert_allclose(load_image(only[4], mode="L", size=8).pixels.numpy(), expected_pixels(4), atol=1e-6)
    assert len(load_dataset(tmp_path / "dict", split="test", columns=cols)) == 2
    assert len(load_dataset(tmp_path / "dict", columns=cols)) == 6  # train by default
    with pytest.raises(InvMMInputError, match=r"no column 'picture' \(--image-column\).*image, text, uid"):
        load_dataset(tmp_path / "p.parquet", columns=Columns(image="picture"))

    folder = tmp_path / "imgf"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png(i))
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "caption": f"cap {i}"})
                                                   + "\n" for i in range(3)))
    items = load_dataset(folder)
    assert items.kind == "imagefolder" and sorted((it.id, it.caption) for it in items) == [
        ("0.png", "cap 0"), ("1.png", "cap 1"), ("2.png", "cap 2")]


def test_a_wrong_image_column_fails_its_rows_and_duplicate_ids_are_recorded(tmp_path):
    rows = [{"image": {"bytes": png(1), "path": None}, "id": "a"}, {"image": {"bytes": None, "path": None}, "id": "b"},
            {"image": {"bytes": png(3), "path": None}, "id": "a"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    items = load_dataset(tmp_path / "d.parquet")
    assert [it.id for it in items][:2] == ["a", "b"] and "repeats that of" in items[2].error
    assert load_image(items[0], mode="L", size=8).error is None
    assert "holds an image with neither bytes nor a path" in load_image(items[1], mode="L", size=8).error
    pq.write_table(pa.Table.from_pylist([{"image": "x.png", "caption": "c"}]), tmp_path / "s.parquet")
    (item,) = load_dataset(tmp_path / "s.parquet", kind="parquet")
    assert "holds str here" in load_image(item, mode="L", size=8).error


def test_a_missing_caption_fails_only_its_image_where_the_family_needs_one():
    from types import SimpleNamespace

    from invmm.data.images import ImageItem

    pixart = SimpleNamespace(conditional=True, default_invert_prompt=False, family="pixart")
    items = [ImageItem("a", "a.png", caption="x"), ImageItem("b", "s.tar", ref="tar:0:1:b.png")]
    check_captions(pixart, InvMMConfig(), items, per_item=True)
    assert items[0].error is None and "s.tar:b.png: no caption" in items[1].error
    with pytest.raises(InvMMInputError, match="have no caption"):
        check_captions(pixart, InvMMConfig(), [ImageItem("c", "c.png")], per_item=True)


def test_parts_are_disjoint_cover_the_dataset_and_do_not_move():
    from invmm.data.datasets import Items
    from invmm.data.images import ImageItem

    items = Items([ImageItem(f"img-{i}", "") for i in range(300)], "folder", {})
    parts = [select_part(items, i, 3) for i in (1, 2, 3)]
    ids = [it.id for p in parts for it in p]
    assert sorted(ids) == sorted(it.id for it in items) and len(set(ids)) == 300
    assert all(80 < len(p) < 120 for p in parts)  # sha256 spreads ids evenly
    assert parts[0].describe()["whole"]["n"] == 300
    more = Items(items + [ImageItem(f"new-{i}", "") for i in range(50)], "folder", {})
    assert {it.id for it in parts[1]} <= {it.id for it in select_part(more, 2, 3)}  # adding images moves none
    assert part_of("img-7", 3) == part_of("img-7", 3)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(InvMMInputError, match="--shard takes I/N"):
            parse_shard(bad)


def test_prefetch_keeps_order_bounds_what_is_read_ahead_and_raises_in_place():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def load(x):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.001)
        with lock:
            in_flight[0] -= 1
        if x == 70:
            raise ValueError("bad 70")
        return x * 2

    got = []
    with pytest.raises(ValueError, match="bad 70"):
        for y in prefetch(range(100), load, threads=4, ahead=8):
            got.append(y)
    assert got == [2 * x for x in range(70)] and peak[0] <= 4


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory, toy_model):
    """24 toy digits in 3 shards (img2dataset layout, one failed download per shard)."""
    import webdataset as wds

    from invmm.zoo.digits import export_images, load_manifest, select_images

    root = tmp_path_factory.mktemp("toy-shards")
    manifest = load_manifest(toy_model)
    chosen = select_images(manifest, {64: 8, 1: 8, 0: 8})
    paths = export_images(manifest, root / "png", ids=[e["id"] for e in chosen])
    shards = root / "shards"
    shards.mkdir()
    for s in range(3):
        rows = [{"key": f"{s:05d}9999", "status": "failed_to_resize", "error_message": "too small"}]
        with wds.TarWriter(str(shards / f"{s:05d}.tar")) as tar:
            for i, (p, e) in enumerate(zip(paths[s::3], chosen[s::3])):
                key = f"{s:05d}{i:04d}"
                tar.write({"__key__": key, "png": p.read_bytes(), "txt": f"digit {e['id']}",
                           "json": json.dumps({"url": f"https://x.invalid/{key}.png", "key": key})})
                rows.append({"key": key, "status": "success", "error_message": None})
        pq.write_table(pa.Table.from_pylist(rows), shards / f"{s:05d}.parquet")
    return shards


@pytest.mark.slow
def test_parts_merged_equal_the_unsharded_audit_and_bad_merges_are_refused(tmp_path, toy_model, toy_shards):
    screen = ["--screen", "loss", "--keep-top", "5"]
    base = ["audit", str(toy_model), str(toy_shards), *FAST, *screen]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    for i in (1, 2):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / f"p{i}"), "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    whole = Ledger(tmp_path / "all").read()
    assert len(whole) == 5 and all(r.status == "ok" for r in whole)
    assert_same_runs(whole, Ledger(tmp_path / "m").read(), what="merged")  # same images and seeds, other batch mates
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert info["parts_merged"] == {"parts": [1, 2], "of": 2, "complete": True} and "shard" not in info
    assert info["screen"]["of"] == 24 and info["dataset"]["skipped"] == {"failed_to_resize": 3}
    assert len(Ledger(tmp_path / "m" / "screen", "scores.jsonl").read()) == 24
    for cmd in (["report"], ["export"], ["compare", str(tmp_path / "all")]):
        res = runner.invoke(app, [cmd[0], str(tmp_path / "m"), *cmd[1:]])
        assert res.exit_code == 0, res.output
    import csv

    exported = list(csv.DictReader(open(tmp_path / "m" / "results.csv")))
    assert all(json.loads(r["meta"]) == {"url": f"https://x.invalid/{r['id'].split('/')[1]}.png"} for r in exported)
    html = (tmp_path / "m" / "report" / "index.html").read_text()
    assert "3 failed_to_resize" in html and "merged parts" in html and "1, 2 of 2" in html

    # refusals, naming the runs: another config, one part twice, another split, a run that is not a part
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "q2"), "--shard", "2/2", "--max-steps", "6"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "q2"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "q2 was made differently" in res.output and "max_steps" in res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "p1"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "both part 1/2" in res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "all"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "all: not a part" in res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "already holds a run" in res.output
    before = (tmp_path / "p1" / "screen" / "scores.jsonl").read_bytes()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "p1"), "--shard", "2/2"])
    assert res.exit_code == 2 and "dataset part (--shard) 1/2 -> 2/2" in res.output
    # refused before the screen ran (it used to screen part 2's images into part 1's folder first)
    assert (tmp_path / "p1" / "screen" / "scores.jsonl").read_bytes() == before
    res = runner.invoke(app, [*base[:-2], "--keep", "0.5", "--out", str(tmp_path / "y"), "--shard", "1/2"])
    assert res.exit_code == 2 and "--keep-top" in res.output
    assert not (tmp_path / "x").exists() or not (tmp_path / "x" / "run.json").exists()

    # An interrupted part (its ledger lacks one kept image) is refused, naming it; fails before the fix, when it
    # merged as a complete, smaller run and the whole's kept image without a record vanished.
    import shutil

    shutil.copytree(tmp_path / "p2", tmp_path / "p2cut")
    lines = (tmp_path / "p2cut" / "results.jsonl").read_text().splitlines()
    dropped = json.loads(lines[-1])["id"]
    (tmp_path / "p2cut" / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    cut = ["merge", str(tmp_path / "p1"), str(tmp_path / "p2cut")]
    res = runner.invoke(app, [*cut, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "p2cut (part 2) is incomplete: it lacks 1 of its results" in res.output, res.output
    assert not (tmp_path / "x" / "run.json").exists()
    res = runner.invoke(app, [*cut, "--out", str(tmp_path / "xi"), "--allow-incomplete"])
    assert res.exit_code == 0, res.output
    merged_info = json.loads((tmp_path / "xi" / "run.json").read_text())["parts_merged"]
    assert merged_info["complete"] is False and merged_info["incomplete_parts"][0]["missing"] == 1
    if dropped in {r.id for r in Ledger(tmp_path / "m").read()}:  # it was among the whole's top K
        assert merged_info["kept_without_results"] == [dropped]
    assert runner.invoke(app, ["report", str(tmp_path / "xi")]).exit_code == 0
    page = (tmp_path / "xi" / "report" / "index.html").read_text()
    assert "lacks 1 result(s): merged with --allow-incomplete" in page


def test_merge_compares_masks_by_content_and_accepts_parts_without_manifest_masks(tmp_path, toy_model, toy_shards):
    """Fails before the fix: --mask PATH was compared as a path string, and a part whose manifest rows had no mask
    lacked `mask` in run.json and was refused as made differently."""
    from invmm.data.split import part_of

    pngs = sorted((toy_shards.parent / "png").glob("*.png"))[:6]
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    for d in ("m1", "m2"):
        (tmp_path / d).mkdir()
        Image.fromarray(mask).save(tmp_path / d / "mask.png")
    Image.fromarray(255 - mask).save(tmp_path / "other.png")
    data = tmp_path / "data"
    data.mkdir()
    for p in pngs:
        (data / p.name).write_bytes(p.read_bytes())
    base = ["audit", str(toy_model), str(data), *FAST]
    for out, part, m in (("a1", "1/2", "m1/mask.png"), ("a2", "2/2", "m2/mask.png"), ("b2", "2/2", "other.png")):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / out), "--shard", part, "--mask", str(tmp_path / m)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "a1"), str(tmp_path / "a2"), "--out", str(tmp_path / "ma")])
    assert res.exit_code == 0, res.output  # one mask, at another path on each "machine"
    res = runner.invoke(app, ["merge", str(tmp_path / "a1"), str(tmp_path / "b2"), "--out", str(tmp_path / "mb")])
    assert res.exit_code == 2 and "b2 was made differently" in res.output and "--mask" in res.output

    # A manifest whose mask column is filled only for images of part 1.
    rows = ["path,mask"] + [f"data/{p.name}," + ("m1/mask.png" if part_of(p.name, 2) == 1 else "") for p in pngs]
    assert any(r.endswith(",") for r in rows[1:]) and any(not r.endswith(",") for r in rows[1:])
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    for out, part in (("c1", "1/2"), ("c2", "2/2")):
        res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "manifest.csv"), *FAST,
                                  "--out", str(tmp_path / out), "--shard", part])
        assert res.exit_code == 0, res.output
    assert "mask" not in json.loads((tmp_path / "c2" / "run.json").read_text())
    res = runner.invoke(app, ["merge", str(tmp_path / "c1"), str(tmp_path / "c2"), "--out", str(tmp_path / "mc")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "mc" / "run.json").read_text())["mask"]["n"] == sum(
        not r.endswith(",") for r in rows[1:])


def test_audit_of_a_parquet_with_bad_rows_records_them_and_goes_on(tmp_path, toy_model):
    good = [{"image": {"bytes": png(i), "path": None}, "caption": f"c{i}"} for i in range(4)]
    bad = [{"image": {"bytes": b"\x89PNG garbage", "path": None}, "caption": "corrupt"}]
    pq.write_table(pa.Table.from_pylist(good + bad), tmp_path / "d.parquet")
    res = runner.invoke(app, ["audit", str(toy_model), str(tmp_path / "d.parquet"), "--out", str(tmp_path / "r"),
                              *FAST])
    assert res.exit_code == 2, res.output  # input errors: recorded, everything else scored
    recs = {r.id: r for r in Ledger(tmp_path / "r").read()}
    assert sum(r.status == "ok" for r in recs.values()) == 4
    assert recs["d/4"].error_kind == "input" and "d.parquet row 4" in recs["d/4"].error
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["dataset"]["kind"] == "parquet" and len(info["dataset"]["content_sha256"]) == 64


def bomb_png(side=20_000) -> bytes:
    """A 1-bit PNG of side x side pixels in a few kB: Pillow refuses to open it (DecompressionBombError)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_oversized_image_in_a_shard_is_an_input_error_and_the_audit_goes_on(tmp_path, toy_model):
    """Fails before the fix: PIL's DecompressionBombError is neither OSError nor ValueError, so the prefetcher
    re-raised it and the audit stopped."""
    import webdataset as wds

    bomb = bomb_png()
    assert len(bomb) < 100_000
    root = tmp_path / "s"
    root.mkdir()
    with wds.TarWriter(str(root / "00000.tar")) as tar:
        for i in range(3):
            tar.write({"__key__": f"k{i}", "png": bomb if i == 1 else png(i)})
    loaded = load_image(load_dataset(root)[1], mode="L", size=8)
    assert loaded.pixels is None and "00000.tar:k1.png" in loaded.error and "too large" in loaded.error
    res = runner.invoke(app, ["audit", str(toy_model), str(root), "--out", str(tmp_path / "r"), *FAST])
    assert res.exit_code == 2, res.output  # the input error recorded, the other images scored
    recs = {r.id: r for r in Ledger(tmp_path / "r").read()}
    assert recs["00000/k1"].error_kind == "input" and "00000.tar:k1.png" in recs["00000/k1"].error
    assert recs["00000/k0"].status == recs["00000/k2"].status == "ok"
    mask = tmp_path / "mask.png"
    mask.write_bytes(bomb)
    from invmm.data.masks import load_mask

    with pytest.raises(InvMMInputError, match="mask.png: the mask is too large"):
        load_mask(mask, size=8)


@pytest.mark.slow
def test_kill_9_mid_sharded_audit_then_resume_loses_and_duplicates_nothing(tmp_path, toy_model, toy_shards):
    """One part of a dataset read from shards, two repeats per image (the resume must also complete images whose
    first repeat was written), killed with SIGKILL mid-run and a torn line left behind, then resumed."""
    args = [str(toy_model), str(toy_shards), *FAST, "--max-steps", "16", "--check-every", "8", "--threshold",
            "0.999", "--shard", "1/3", "--repeats", "2"]
    ref = tmp_path / "ref"
    res = runner.invoke(app, ["audit", *args, "--out", str(ref)])
    assert res.exit_code == 0, res.output
    expected = Ledger(ref).read()
    n = len(expected)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "invmm.cli", "audit", *args, "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = run / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not ledger.exists() or ledger.read_text().count("\n") < 4):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = ledger.read_text().count("\n")
    assert 4 <= written < n, "the audit must be killed mid-run"
    with open(ledger, "a") as f:  # what a crash mid-write leaves: a torn, unterminated line
        f.write('{"id": "00000/0000')
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"{written} already done" in res.stdout and "torn" in res.stdout
    keys = [(r.id, r.repeat) for r in Ledger(run).read()]
    assert len(keys) == len(set(keys)) == n  # no repeat lost, none duplicated
    assert_same_runs(Ledger(run).read(), expected, what="resumed")
    assert len(json.loads((run / "run.json").read_text())["sessions"]) == 1  # the killed one never finished


@pytest.mark.slow
def test_evaluate_and_estimate_read_a_hugging_face_dataset_with_named_columns(tmp_path, toy_model):
    _hf_dataset(8).save_to_disk(str(tmp_path / "saved"))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--model", str(toy_model), "--data",
                              str(tmp_path / "saved"), "--label-column", "member", "--id-column", "uid",
                              "--scorers", "loss", "--positive", "member"])
    assert res.exit_code == 0, res.output
    from invmm.runs.scores import ScoreRecord

    scores = Ledger(tmp_path / "run", "scores.jsonl", ScoreRecord).read()
    assert sorted(r.id for r in scores) == [f"u{i}" for i in range(8)]
    assert {r.label for r in scores} == {"member", "nonmember"} and all(r.status == "ok" for r in scores)
    res = runner.invoke(app, ["estimate", str(toy_model), str(tmp_path / "saved"), "--max-steps", "10", "-k", "1"])
    assert res.exit_code == 0 and "8 x 1" in res.output, res.output


@pytest.mark.slow
def test_evaluate_in_parts_merged_equals_the_whole_and_dataset_test_reads_it(tmp_path, toy_model):
    from invmm.runs.scores import ScoreRecord

    _hf_dataset(16).save_to_disk(str(tmp_path / "saved"))
    base = ["evaluate", "--model", str(toy_model), "--data", str(tmp_path / "saved"), "--label-column", "member",
            "--scorers", "loss,pia", "--positive", "member", "--bootstrap", "10"]
    for name, part in (("whole", []), ("e1", ["--shard", "1/2"]), ("e2", ["--shard", "2/2"])):
        res = runner.invoke(app, [base[0], str(tmp_path / name), *base[1:], *part])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "e1"), str(tmp_path / "e2"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output

    def read(run):
        return {(r.id, r.scorer): r.score for r in Ledger(tmp_path / run, "scores.jsonl", ScoreRecord).read()}

    whole, merged = read("whole"), read("m")
    assert whole.keys() == merged.keys() and len(whole) == 32
    # Parts of two datasets (fails before the fix: evaluate parts kept only {index, of}) and an interrupted part.
    _hf_dataset(17).save_to_disk(str(tmp_path / "other"))
    res = runner.invoke(app, [base[0], str(tmp_path / "o2"), *base[1:4], str(tmp_path / "other"), *base[5:],
                              "--shard", "2/2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "e1"), str(tmp_path / "o2"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "o2 was made differently" in res.output and "dataset" in res.output, res.output
    lines = (tmp_path / "e2" / "scores.jsonl").read_text().splitlines()
    (tmp_path / "e2" / "scores.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    res = runner.invoke(app, ["merge", str(tmp_path / "e1"), str(tmp_path / "e2"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "e2 (part 2) is incomplete: it lacks 2 of its results" in res.output, res.output
    assert all(merged[k] == pytest.approx(v, rel=1e-5) for k, v in whole.items())
    res = runner.invoke(app, ["dataset-test", str(tmp_path / "m"), "--suspect", "member", "--reference",
                              "nonmember", "--splits", "5", "--no-curve"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "e1"), str(tmp_path / "m"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a part" in res.output
    res = runner.invoke(app, [base[0], str(tmp_path / "e1"), *base[1:], "--shard", "2/2"])
    assert res.exit_code == 2 and "--shard" in res.output


def test_the_screen_keeps_unreadable_images_for_the_ledger_without_their_taking_a_scored_place():
    import math

    from invmm.runs.scores import ScoreRecord
    from invmm.runs.screen import select_kept

    records = [ScoreRecord(f"x{i}", "loss", float(i)) for i in range(6)]
    records += [ScoreRecord("bad", "loss", math.nan, status="error", error="corrupt", error_kind="input"),
                ScoreRecord("nan", "loss", math.nan, status="error", error="diverged")]
    # lower loss = more suspicious; a scorer's own failure is looked at first, an unreadable image on top
    assert select_kept(records, higher_is_better=False, count=3) == {"bad", "nan", "x0", "x1"}


def test_a_parquet_manifest_of_paths_or_of_captions_alone_is_still_a_manifest(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    pq.write_table(pa.Table.from_pylist([{"path": "a.png", "label": "member"}]), tmp_path / "paths.parquet")
    pq.write_table(pa.Table.from_pylist([{"caption": "a cat", "label": "member"}]), tmp_path / "captions.parquet")
    assert load_dataset(tmp_path / "paths.parquet").kind == "manifest"
    items = load_dataset(tmp_path / "captions.parquet", labelled=True, captions_only_ok=True)
    assert items.kind == "manifest" and items[0].caption == "a cat" and items[0].path == ""
