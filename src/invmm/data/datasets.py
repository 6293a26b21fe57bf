"""A dataset as the user gives it: a folder of images, a folder per label, a CSV/JSONL/Parquet manifest, webdataset
shards or an img2dataset folder (shards.py), or a Hugging Face dataset (hf.py: save_to_disk, Parquet with an
image column, an imagefolder).

Ids are stable: the manifest's `id` column, else the path relative to the folder or manifest, so the same
dataset gives the same ids (and so the same per-image seeds) wherever it lies.

Caption-level scorers read no image: for them a manifest may list captions without a `path` (`caption,label
[,id]`); such a row's item has path "" and, without an `id`, its row number (1 = first data row) as id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from invmm.data import hf, shards
from invmm.data.hf import Columns
from invmm.data.images import IMAGE_SUFFIXES, ImageItem, collect_images
from invmm.errors import InvMMInputError

MANIFEST_SUFFIXES = {".csv", ".jsonl", ".parquet"}
KINDS = ("auto", "folder", "manifest", "shards", "hf", "parquet", "imagefolder")


class Items(list):
    """A dataset's items (a list of ImageItem), and what run.json records of the dataset beyond them: its kind,
    the hash of its contents where the reader computed one, rows skipped and problems found while listing."""

    def __init__(self, items=(), kind: str = "folder", info: dict | None = None):
        super().__init__(items)
        self.kind, self.info = kind, dict(info or {})

    def describe(self) -> dict:
        return {"kind": self.kind, **self.info}


def load_dataset(source: str | Path, *, labelled: bool = False, captions_only_ok: bool = False, kind: str = "auto",
                 columns: Columns | None = None, caption_key: str | None = None, split: str | None = None) -> Items:
    """Items (not yet decoded) of a dataset. With `labelled`, a folder's subfolders are the labels. With
    `captions_only_ok`, manifest rows may give a caption instead of an image path (see the module doc).
    `kind` forces a reader (auto: from what `source` is); `columns`, `caption_key` and `split` name where a
    shard set or Hugging Face dataset keeps what."""
    if kind not in KINDS:
        raise InvMMInputError(f"unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}")
    text = str(source)
    p = Path(source)
    kind = _detect(text, p) if kind == "auto" else kind
    if kind == "shards":
        index = shards.index_shards(text, caption_key=caption_key, label_key=columns.label if columns else None)
        items = Items(index.items, kind="shards", info=index.describe())
        _mark_duplicate_ids(items)  # the same shard listed twice (a brace pattern), or keys that meet
    elif kind in ("hf", "parquet", "imagefolder"):
        if not p.exists():
            raise InvMMInputError(f"{p}: no such file or folder")
        columns = columns or Columns()
        if kind == "hf":
            index = hf.index_saved(p, columns, split)
        elif kind == "parquet":
            index = hf.index_parquet(p, columns)
        else:
            index = hf.index_imagefolder(p, columns, split)
        items = Items(index.items, kind=index.kind, info=index.describe())
        _mark_duplicate_ids(items)
    elif not p.exists():
        raise InvMMInputError(f"{p}: no such file or folder; give a folder of images, a CSV/JSONL/Parquet manifest, "
                              "webdataset shards or a Hugging Face dataset (see docs/how-to/audit-a-dataset.md)")
    elif kind == "folder" or p.is_dir():
        items = Items(_labelled_folder(p) if labelled else collect_images([str(p)]), kind="folder")
    else:
        if p.suffix.lower() not in MANIFEST_SUFFIXES:
            raise InvMMInputError(f"{p}: not a dataset manifest; expected a folder or a .csv, .jsonl or .parquet "
                                  "file with a 'path' column")
        rows = _read_manifest(p, captions_only_ok)
        items = Items(_rows_to_items(p, rows, captions_only_ok), kind="manifest")
    if labelled:
        unlabelled = [it.id for it in items if not it.label and not it.error]
        if unlabelled:
            raise InvMMInputError(f"{p}: {len(unlabelled)} row(s) have no label (first: {unlabelled[0]}); "
                                  "every row needs a 'label' for evaluation" +
                                  ("" if items.kind in ("folder", "manifest") else " (--label-column)"))
    return items


def _detect(text: str, p: Path) -> str:
    if shards.is_shard_source(text):
        return "shards"
    if hf.is_saved_dataset(p):
        return "hf"
    if p.is_dir():
        if hf.is_imagefolder(p):
            return "imagefolder"
        if any(p.glob("*.parquet")) and not any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                                                for f in p.iterdir()):
            return "parquet"
        return "folder"
    if p.suffix.lower() == ".parquet" and p.is_file() and hf.is_image_parquet(p):
        return "parquet"
    return "manifest"


def _mark_duplicate_ids(items: list[ImageItem]) -> None:
    """An id column with a repeated value would mix two images' results: the first row keeps the id, a repeat
    becomes an input error of its own (recorded, counted; the audit goes on)."""
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            first, it.id = seen[it.id], f"{it.id}#duplicate-{it.origin}"
            it.error = f"{it.origin}: its id repeats that of {first}; ids must be unique (--id-column names the column)"
        else:
            seen[it.id] = it.origin


def _labelled_folder(root: Path) -> list[ImageItem]:
    labels = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not labels:
        raise InvMMInputError(f"{root}: a labelled folder needs one subfolder per label (e.g. member/, "
                              "nonmember/); found none")
    if loose:
        raise InvMMInputError(f"{root}: images directly in the folder have no label ({loose[0]}, ...); "
                              "move them into a label subfolder")
    items = []
    for d in labels:
        for it in collect_images([str(d)]):
            it.id = f"{d.name}/{it.id}"
            it.label = d.name
            items.append(it)
    return items


def _read_manifest(p: Path, captions_only_ok: bool = False) -> list[dict]:
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            with open(p, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = ("path", "caption") if captions_only_ok else ("path",)
                if not reader.fieldnames or not set(columns) & set(reader.fieldnames):
                    raise InvMMInputError(f"{p}: the CSV header must name a {' or a '.join(map(repr, columns))} "
                                          f"column; it has {reader.fieldnames or 'no header'}")
                return [dict(r) for r in reader]
        if suffix == ".jsonl":
            rows = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvMMInputError(f"{p}: line {n} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise InvMMInputError(f"{p}: line {n} must be a JSON object with a 'path' key")
                rows.append(row)
            return rows
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InvMMInputError(f"{p}: reading Parquet needs pyarrow; pip install 'invmm[parquet]' "
                                  "or give a CSV/JSONL manifest") from None
        return pq.read_table(p).to_pylist()
    except UnicodeDecodeError:
        raise InvMMInputError(f"{p}: not UTF-8 text; save the manifest as UTF-8") from None


def _rows_to_items(p: Path, rows: list[dict], captions_only_ok: bool = False) -> list[ImageItem]:
    base = p.parent
    items, seen = [], {}
    for n, row in enumerate(rows, 1):
        raw = row.get("path")
        if raw in (None, ""):
            if not captions_only_ok:
                raise InvMMInputError(f"{p}: row {n} has no 'path'")
            if row.get("caption") in (None, ""):
                raise InvMMInputError(f"{p}: row {n} has neither an image 'path' nor a 'caption'")
        path = None if raw in (None, "") else Path(str(raw))
        path = path if path is None or path.is_absolute() else base / path
        image_id = str(row.get("id") or "") or (Path(str(raw)).as_posix() if path else str(n))
        if image_id in seen:
            raise InvMMInputError(f"{p}: id {image_id!r} appears in rows {seen[image_id]} and {n}; ids must be unique")
        seen[image_id] = n
        caption, label, cls = row.get("caption"), row.get("label"), row.get("class")
        it = ImageItem(id=image_id, path=str(path or ""), caption=None if caption in (None, "") else str(caption),
                       label=None if label in (None, "") else str(label),
                       class_label=None if cls in (None, "") else str(cls))
        if path is not None and not path.is_file():
            it.error = f"{path}: no such file (row {n} of {p})"
        mask = row.get("mask")
        if mask not in (None, ""):  # partial memorization: the region this image's check compares
            mask = Path(str(mask))
            it.mask, it.mask_source = str(mask if mask.is_absolute() else base / mask), "manifest"
        items.append(it)
    if not items:
        raise InvMMInputError(f"{p}: the manifest lists no images")
    return items
