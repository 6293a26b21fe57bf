"""One dataset split across machines without a cluster: `--shard I/N` audits a deterministic 1/N of the images.

An image belongs to part I of N by the sha256 of its id, so the parts are disjoint, cover the dataset, do not
depend on the order the dataset lists its images in, and stay the same when images are added (no image moves
between parts). `invmm merge` (merge.py) puts the N runs back together.
"""

from __future__ import annotations

import hashlib
import re

from invmm.errors import InvMMInputError
from invmm.store.hashing import sha256_file


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InvMMInputError(f"--shard takes I/N with 1 <= I <= N (e.g. 1/4 ... 4/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def part_of(image_id: str, n: int) -> int:
    """The part (1..n) an image id belongs to."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % n + 1


def select_part(items, index: int, n: int):
    """The items of part `index` of `n`, in the dataset's order, as the same kind of list (its run.json record
    says which part of which whole dataset: the whole's hash and size, so `merge` can check the parts match)."""
    chosen = [it for it in items if part_of(it.id, n) == index]
    if not hasattr(items, "info"):
        return chosen
    return type(items)(chosen, items.kind, {**items.info, "whole": whole(items)})


def whole(items) -> dict:
    """The whole dataset a part was cut from, as every part records it: its size and the hash of its ids (ids
    are stable where paths are not: each machine may keep the data elsewhere)."""
    ids = hashlib.sha256("\n".join(sorted(it.id for it in items)).encode()).hexdigest()
    out = {"n": len(items), "ids_sha256": ids}
    masked = sorted((it.id, it.mask) for it in items if it.mask)
    if masked:  # a manifest's mask column, by content: parts on other machines keep the masks elsewhere
        h = hashlib.sha256()
        for image_id, mask in masked:
            h.update(f"{image_id}\0{_file_hash(mask)}\n".encode())
        out["masks"] = {"n": len(masked), "sha256": h.hexdigest()}
    return out


def _file_hash(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return "unreadable"  # the part that holds the image records the error; the whole's hash still compares
