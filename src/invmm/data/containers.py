"""Reading one image's bytes where a dataset keeps it: a file, a member of a webdataset tar, a row of a Parquet
file or of a Hugging Face dataset saved with `save_to_disk`.

An item's `ref` says where in its `path` the image lies, as a short string that survives JSON (the Ray screen's
workers get items as JSON and read their images themselves):

    tar:OFFSET:SIZE:MEMBER         the member's bytes at OFFSET of the tar (found once by the shard index)
    pq:ROW_GROUP:INDEX:COLUMN:ROW  the COLUMN cell of row INDEX of a Parquet row group (ROW: the file's row)
    hf:ROW:COLUMN                  row ROW of a save_to_disk dataset (memory-mapped Arrow)

Random access (rather than one sequential pass) because an audit reads its images twice, all of them for the
screen and the kept few for InvMM, and the Ray screen's workers each read their own share.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path


class ContainerError(Exception):
    """The container holds something other than an image where the item points (a wrong column, a cut shard)."""


def describe_ref(path: str, ref: str | None) -> str:
    if not ref:
        return path
    kind, _, rest = ref.partition(":")
    if kind == "tar":
        return f"{path}:{rest.split(':', 2)[2]}"
    if kind == "pq":
        return f"{path} row {rest.split(':')[3]}"
    if kind == "hf":
        return f"{path} row {rest.split(':')[0]}"
    return f"{path} ({ref})"


def open_image_bytes(path: str, ref: str | None):
    """What PIL.Image.open takes: the path of an image file, or a BytesIO of a contained image's bytes."""
    if not ref:
        return path
    kind, _, rest = ref.partition(":")
    if kind == "tar":
        offset, size, _member = rest.split(":", 2)
        with open(path, "rb") as f:
            f.seek(int(offset))
            data = f.read(int(size))
        if len(data) != int(size):
            raise ContainerError(f"the shard ends inside this member ({len(data)} of {size} bytes)")
        return io.BytesIO(data)
    if kind == "pq":
        group, index, column, _row = rest.split(":", 3)
        return cell_bytes(_row_group_column(path, int(group), column)[int(index)], column)
    if kind == "hf":
        row, column = rest.split(":", 1)
        return cell_bytes(_saved_dataset(path, column)[int(row)][column], column)
    raise ContainerError(f"unknown image reference {ref!r}")


def cell_bytes(value, column: str):
    """An image cell as Hugging Face stores it ({"bytes", "path"}, or raw bytes) -> what PIL opens."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        if value.get("path"):
            return value["path"]
        if {"bytes", "path"} >= set(value):
            raise ContainerError(f"the {column!r} column holds an image with neither bytes nor a path here")
    if isinstance(value, bytes | bytearray):
        return io.BytesIO(value)
    held = "nothing" if value is None else type(value).__name__
    raise ContainerError(f"the {column!r} column holds {held} here, not image bytes; name the image column with "
                         "--image-column")


_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _row_group_column_cached(path: str, group: int, column: str) -> list:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).to_pylist()


def _row_group_column(path: str, group: int, column: str) -> list:
    # Reads arrive in dataset order, so the row group just read serves the next hundreds of images; two cached
    # groups bound the memory to two row groups' images whatever the dataset's size.
    with _lock:
        return _row_group_column_cached(str(Path(path)), group, column)


@functools.lru_cache(maxsize=4)
def _saved_dataset(path: str, column: str):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds.features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))  # bytes; PIL decodes them as any other image
    return ds
