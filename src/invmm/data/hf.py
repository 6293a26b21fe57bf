"""Hugging Face datasets -> items: a `save_to_disk` folder, Parquet files with an image column, an imagefolder.

Only the light columns (id, caption, label, class) are read to list a dataset, a batch at a time; each image is
read from the memory-mapped Arrow file, the Parquet row group or its file when its turn comes (containers.py),
so no dataset is ever held in memory whole. Ids: the id column's value where there is one; else the row
(FILE/ROW for Parquet, ROW for a saved dataset) or, in an imagefolder, the file's path below the folder.

The image column holds what `datasets.Image` stores ({"bytes", "path"}) or raw bytes; a row holding anything
else fails that row with an input error (the audit goes on), and a missing column is refused up front.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from invmm.data.images import ImageItem
from invmm.errors import InvMMInputError
from invmm.store.hashing import sha256_file

BATCH_ROWS = 1024


@dataclass
class Columns:
    """Which columns hold what; None: the defaults, where the dataset has them."""

    image: str | None = None  # default "image"
    caption: str | None = None  # default "caption", else "text"
    id: str | None = None  # default "id"
    label: str | None = None  # default "label" (membership, for evaluate)
    class_label: str | None = None  # default "class"

    def resolve(self, names: list[str], where: str, *, need_image: bool = True) -> dict:
        """The column for each role; a column named by the user but absent is an error naming what is there."""
        chosen = {}
        defaults = {"image": ["image"], "caption": ["caption", "text"], "id": ["id"], "label": ["label"],
                    "class_label": ["class"]}
        for role, fallbacks in defaults.items():
            asked = getattr(self, role)
            if asked is not None:
                if asked not in names:
                    flag = "--" + role.replace("_label", "").replace("_", "-") + "-column"
                    raise InvMMInputError(f"{where}: no column {asked!r} ({flag}); the columns are "
                                          f"{', '.join(names)}")
                chosen[role] = asked
            else:
                chosen[role] = next((c for c in fallbacks if c in names), None)
        if need_image and chosen["image"] is None:
            raise InvMMInputError(f"{where}: no 'image' column; name the column that holds the images with "
                                  f"--image-column (the columns are {', '.join(names)})")
        return chosen


def _datasets():
    try:
        import datasets
    except ImportError:
        raise InvMMInputError("reading a Hugging Face dataset needs the datasets package: pip install "
                              "'invmm[datasets]'") from None
    return datasets


def is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def is_imagefolder(p: Path) -> bool:
    return p.is_dir() and any((p / f"metadata.{ext}").is_file() for ext in ("jsonl", "csv", "parquet"))


def is_image_parquet(p: Path) -> bool:
    """A Parquet of images (a column of image bytes), not a manifest of file paths."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False  # read as a manifest, whose reader says what to install

    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    if not files:
        return False
    try:
        schema = pq.read_schema(files[0])
    except Exception:
        return False
    # A manifest (path,caption,label) may also list captions without paths: only a column of bytes makes a
    # Parquet one of images (`--format parquet` reads one whose image column is wrongly typed, to record its rows).
    return any((pa.types.is_struct(f.type) and "bytes" in [x.name for x in f.type]) or pa.types.is_binary(f.type)
               or pa.types.is_large_binary(f.type) for f in schema)


class HFIndex:
    """Items of a Hugging Face dataset and the hash of its files."""

    def __init__(self, kind: str):
        self.kind = kind
        self.items: list[ImageItem] = []
        self.hashes: dict[str, str] = {}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.hashes.items())).encode()).hexdigest()

    def describe(self) -> dict:
        return {"files": len(self.hashes), "content_sha256": self.fingerprint()}


def _item(image_id: str, path: str, ref: str | None, row: dict, cols: dict) -> ImageItem:
    def value(role):
        v = row.get(cols[role]) if cols[role] else None
        return None if v in (None, "") else str(v)

    return ImageItem(id=value("id") or image_id, path=path, ref=ref, caption=value("caption"), label=value("label"),
                     class_label=value("class_label"))


def index_saved(source: Path, columns: Columns, split: str | None) -> HFIndex:
    """A `Dataset.save_to_disk` (or DatasetDict) folder, read memory-mapped."""
    datasets = _datasets()

    try:
        ds = datasets.load_from_disk(str(source))
    except Exception as exc:
        raise InvMMInputError(f"{source}: not a readable save_to_disk dataset ({exc})") from None
    folder = source
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        split = split or ("train" if "train" in ds else names[0] if len(names) == 1 else None)
        if split not in ds:
            raise InvMMInputError(f"{source}: a dataset with splits {', '.join(names)}; choose one with --split")
        ds, folder = ds[split], source / split
    cols = columns.resolve(list(ds.column_names), str(source))
    labels = _class_names(ds, cols)
    index = HFIndex("hf-saved")
    light = [c for role, c in cols.items() if c and role != "image"]
    # Only the light columns are read, a batch at a time; a dataset of images alone has rows with nothing else.
    rows = (dict(zip(batch, values)) for batch in ds.select_columns(light).iter(batch_size=BATCH_ROWS)
            for values in zip(*batch.values())) if light else ({} for _ in range(ds.num_rows))
    path = str(folder)  # one string shared by every item
    for n, row in enumerate(rows):
        row = {c: _named(labels, c, v) for c, v in row.items()}
        index.items.append(_item(str(n), path, f"hf:{n}:{cols['image']}", row, cols))
    for f in sorted({c["filename"] for c in ds.cache_files}):
        index.hashes[Path(f).name] = sha256_file(Path(f))
    return index


def _class_names(ds, cols: dict) -> dict:
    """ClassLabel columns: their names, so a label reads 'member', not 0."""
    import datasets

    return {c: ds.features[c].names for c in cols.values()
            if c and isinstance(ds.features.get(c), datasets.ClassLabel)}


def _named(labels: dict, column: str, value):
    names = labels.get(column)
    return names[value] if names is not None and isinstance(value, int) and 0 <= value < len(names) else value


def index_parquet(source: Path, columns: Columns) -> HFIndex:
    """Parquet files (one, or a folder of them) with an image column, read a row group at a time."""
    import pyarrow.parquet as pq

    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
    index = HFIndex("parquet")
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:
            raise InvMMInputError(f"{f}: not a readable parquet file ({exc})") from None
        cols = columns.resolve(pf.schema_arrow.names, str(f))
        light = [c for role, c in cols.items() if c and role != "image"]
        labels = _parquet_class_names(pf.schema_arrow)
        stem = f.relative_to(source).with_suffix("").as_posix() if source.is_dir() else f.stem
        path = str(f)
        row = 0
        for group in range(pf.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            table = pf.read_row_group(group, columns=light).to_pylist() if light else [{}] * n
            for i, values in enumerate(table):
                values = {c: _named(labels, c, v) for c, v in values.items()}
                index.items.append(_item(f"{stem}/{row}", path, f"pq:{group}:{i}:{cols['image']}:{row}", values,
                                         cols))
                row += 1
        index.hashes[stem] = sha256_file(f)
    if not index.items:
        raise InvMMInputError(f"{source}: the parquet files hold no rows")
    return index


def _parquet_class_names(schema) -> dict:
    """ClassLabel names that `datasets` stored in a Parquet's schema metadata (none without `datasets`)."""
    try:
        import datasets
    except ImportError:
        return {}
    try:
        features = datasets.Features.from_arrow_schema(schema)
    except Exception:
        return {}
    return {c: f.names for c, f in features.items() if isinstance(f, datasets.ClassLabel)}


def index_imagefolder(source: Path, columns: Columns, split: str | None) -> HFIndex:
    """An imagefolder (image files with a metadata.jsonl/.csv of captions and labels), streamed by `datasets`."""
    datasets = _datasets()

    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(source), split=split or "train", streaming=True)
    except Exception as exc:
        raise InvMMInputError(f"{source}: not a readable imagefolder ({exc})") from None
    names = list(ds.features) if ds.features else []
    cols = columns.resolve(names, str(source))
    ds = ds.cast_column(cols["image"], datasets.Image(decode=False))  # the file's path; decoded when its turn comes
    index = HFIndex("imagefolder")
    for row in ds:
        cell = row[cols["image"]]
        path = Path(cell.get("path") or "")
        try:
            rel = path.resolve().relative_to(source.resolve()).as_posix()
        except ValueError:
            rel = path.name
        labels = {cols["label"]: row.get(cols["label"])} if cols["label"] else {}
        index.items.append(_item(rel, str(path), None, {**row, **labels}, cols))
        index.hashes[rel] = sha256_file(path)
    for meta in sorted(source.glob("metadata.*")):
        index.hashes[meta.name] = sha256_file(meta)
    return index
