"""webdataset shards and img2dataset output folders -> items, read once to index and hash.

A sample is the tar members sharing a key (webdataset's rule, `base_plus_ext`): KEY.jpg (or .png, .webp, ...),
KEY.txt (the caption), KEY.json (metadata; img2dataset's url, sizes, status), KEY.cls (a class). One sequential
read of each shard finds every member's offset, reads the small text members and hashes the shard's bytes, so
the dataset hash covers the contents without a second pass; the images are decoded later, each when its turn
comes (containers.py). Ids are SHARD/KEY (the shard's path below the folder, without .tar): stable across runs
and machines.

Bad data does not stop the audit: a sample whose image is missing or cut off by a truncated shard, a key that
appears twice, a missing caption become items with an error (recorded in the ledger with their shard and key);
what cannot be listed at all (the samples after a shard's cut) is a problem of the dataset, counted in run.json.
img2dataset's parquet beside each shard lists every url tried: the rows that failed are skipped and counted by
status (failed_to_download, failed_to_resize, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

from invmm.data.images import ImageItem
from invmm.errors import InvMMInputError
from invmm.store.hashing import sha256_file

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TEXT_LIMIT = 1 << 20  # a caption or metadata member larger than this is not a caption
# fields of a sample's .json that the item holds already (img2dataset's key, status, ...), not kept twice as meta
_KNOWN = {"key", "caption", "status", "error_message", "label"}


def is_shard_source(source: str) -> bool:
    p = Path(source)
    if "{" in source and "}" in source and (".." in source or "," in source):  # {00000..00099} or {a,b}
        return True
    if p.is_file():
        return p.suffix.lower() == ".tar"
    return p.is_dir() and any(p.rglob("*.tar"))  # as list_shards finds them


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise InvMMInputError("reading webdataset shards needs the webdataset package: pip install "
                              "'invmm[datasets]'") from None
    return webdataset


def list_shards(source: str) -> tuple[list[Path], Path]:
    """The shard files of a .tar, a brace pattern (shards/{00000..00099}.tar) or a folder of shards (recursive),
    and the folder their ids are relative to."""
    expand_urls = _webdataset().shardlists.expand_urls

    p = Path(source)
    if p.is_dir():
        shards = sorted(f for f in p.rglob("*.tar") if f.is_file())
        return shards, p
    shards = [Path(s) for s in expand_urls(source)]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise InvMMInputError(f"{source}: {len(missing)} of {len(shards)} shard(s) do not exist (first: {missing[0]}); "
                              "give a .tar, a brace pattern of existing shards, or a folder of shards")
    return shards, Path(_common_parent(shards))


def _common_parent(paths: list[Path]) -> str:
    return os.path.commonpath([os.path.abspath(p.parent) for p in paths]) if paths else "."


class _Hashing:
    """A file read sequentially through sha256 (tarfile's stream mode reads every byte once)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.sha.update(data)
        return data


class ShardIndex:
    """Items of a set of shards, with what the index found wrong and the shards' content hashes."""

    def __init__(self, caption_key: str | None = None, label_key: str | None = None):
        self.caption_key, self.label_key = caption_key, label_key or "label"
        self.items: list[ImageItem] = []
        self.problems: list[str] = []  # what could not be listed (a shard's samples after its cut)
        self.skipped: Counter = Counter()  # img2dataset rows not downloaded, by status
        self.skipped_examples: dict[str, str] = {}
        self.hashes: dict[str, str] = {}  # shard (or its parquet) name -> sha256 of its bytes
        self.shards = 0

    def add_shard(self, shard: Path, name: str, listed: dict | None = None) -> None:
        """Index one shard. `listed` (img2dataset): key -> the parquet row, whose failed rows are not in the tar."""
        samples: dict[str, dict] = {}
        order: list[str] = []
        duplicates: dict[str, str] = {}  # key -> its first repeated member
        cut = None
        split = _webdataset().tariterators.base_plus_ext  # a sample's key and extension, webdataset's rule
        with open(shard, "rb") as f:
            hashing = _Hashing(f)
            try:
                with tarfile.open(fileobj=hashing, mode="r|") as tar:
                    for info in tar:
                        if not info.isreg():
                            continue
                        key, ext = split(info.name)
                        if key is None:
                            continue
                        ext = (ext or "").lower()
                        sample = samples.get(key)
                        if sample is None:
                            sample = samples[key] = {"members": {}}
                            order.append(key)
                        elif ext in sample["members"] or order[-1] != key:
                            # webdataset groups a key's members when they are adjacent; the same member twice, or
                            # the key again after others, is a second sample under one key
                            duplicates.setdefault(key, info.name)
                            continue
                        sample["members"][ext] = (info.offset_data, info.size, info.name)
                        if ext in ("txt", "json", "cls") and info.size <= TEXT_LIMIT:
                            sample[ext] = tar.extractfile(info).read()
                    while hashing.read(1 << 20):  # the padding after the last member: the hash covers the file
                        pass
            except (tarfile.ReadError, EOFError, OSError) as exc:
                cut = str(exc) or type(exc).__name__
        self.hashes[name] = hashing.sha.hexdigest()
        self.shards += 1
        size, path = shard.stat().st_size, str(shard)  # one path string shared by the shard's items
        for key in order:
            self._add_sample(shard, path, name, key, samples[key], size, listed)
        for key, member in duplicates.items():
            self.items.append(ImageItem(id=f"{name}/{key}#duplicate", path=str(shard), error=(
                f"{shard}:{member}: the key {key!r} appears twice in the shard; the first sample is audited, "
                "this one is not")))
        if cut is not None:
            after = f"after the sample {order[-1]!r}" if order else "before its first sample"
            self.problems.append(f"{shard}: the shard is truncated or corrupt {after} ({cut}); its later samples, "
                                 "if any, cannot be read")
        if listed is not None:
            for key, row in listed.items():
                status = row.get("status") or "unknown"
                if status != "success":
                    self.skipped[status] += 1
                    self.skipped_examples.setdefault(status, f"{name}/{key}: {row.get('error_message') or status}")
                elif key not in samples and cut is None:
                    self.problems.append(f"{shard}: the parquet lists {key!r} as downloaded, but the shard holds no "
                                         "such sample")

    def _add_sample(self, shard: Path, path: str, name: str, key: str, sample: dict, size: int,
                    listed: dict | None) -> None:
        image = next((sample["members"][e] for e in IMAGE_EXTENSIONS if e in sample["members"]), None)
        meta = _json(sample.get("json"))
        caption = _text(sample.get("txt"))
        if self.caption_key:
            value = meta.get(self.caption_key)
            caption = None if value in (None, "") else str(value)
        label = meta.get(self.label_key)
        item = ImageItem(id=f"{name}/{key}", path=path, caption=caption or None,
                         label=None if label in (None, "") else str(label),
                         class_label=_text(sample.get("cls")) or None,
                         meta={k: v for k, v in meta.items()
                               if k not in _KNOWN and isinstance(v, str | int | float | bool)} or None)
        if image is None:
            if listed is not None and listed.get(key, {}).get("status") not in (None, "success"):
                return  # img2dataset wrote the metadata of a failed download; counted as skipped
            item.error = (f"{shard}:{key}: the sample has no image member (it has "
                          f"{', '.join(sorted(sample['members'])) or 'nothing'}); expected one of "
                          f"{', '.join('.' + e for e in IMAGE_EXTENSIONS)}")
        else:
            offset, length, member = image
            item.ref = f"tar:{offset}:{length}:{member}"
            if offset + length > size:
                item.error = f"{shard}:{member}: the shard ends inside this image ({size - offset} of {length} bytes)"
        self.items.append(item)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.hashes.items())).encode()).hexdigest()

    def describe(self) -> dict:
        return {"shards": self.shards, "content_sha256": self.fingerprint(), "skipped": dict(self.skipped),
                "skipped_examples": self.skipped_examples, "problems": self.problems}


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8", errors="replace").strip()


def _json(data: bytes | None) -> dict:
    if data is None:
        return {}
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def index_shards(source: str, *, caption_key: str | None = None, label_key: str | None = None) -> ShardIndex:
    """Index a .tar, a brace pattern or a folder of shards; an img2dataset folder's parquets are read beside
    their shards (NAME.parquet next to NAME.tar). The caption is the .txt member or the .json's `caption_key`;
    a member/non-member label, the .json's `label_key` (default "label")."""
    shards, root = list_shards(source)
    if not shards:
        raise InvMMInputError(f"{source}: no .tar shards found")
    index = ShardIndex(caption_key, label_key)
    for shard in shards:
        # The path as listed, not as resolved: a shard reached through a symlink keeps the folder it was found in,
        # so x/00000.tar and y/00000.tar stay apart wherever their files lie.
        name = Path(os.path.relpath(os.path.abspath(shard), os.path.abspath(root))).with_suffix("").as_posix()
        table = shard.with_suffix(".parquet")
        listed = _img2dataset_rows(table) if table.is_file() else None
        index.add_shard(shard, name, listed)
        if listed is not None:
            index.hashes[name + ".parquet"] = sha256_file(table)
    return index


def _img2dataset_rows(path: Path) -> dict | None:
    """key -> {status, error_message} of an img2dataset shard's parquet; None if the parquet is not one."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvMMInputError(f"{path}: reading img2dataset's parquet needs pyarrow; pip install "
                              "'invmm[datasets]'") from None
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise InvMMInputError(f"{path}: not a readable parquet file ({exc})") from None
    if "key" not in schema.names or "status" not in schema.names:
        return None  # a Parquet of something else that happens to share the shard's name: not img2dataset's
    columns = [c for c in ("key", "status", "error_message") if c in schema.names]
    rows = pq.read_table(path, columns=columns).to_pylist()
    return {str(r["key"]): r for r in rows}
