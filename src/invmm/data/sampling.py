"""Which images a sampled audit inverts: a simple random sample without replacement, drawn by a seeded hash of each
image's id, so the same seed draws the same images on every machine and in every `--shard` part.

Every image gets a rank, the first 8 bytes of sha256(seed, "sample", id); a sample of M from a set of images is its
M images of smallest rank. Ranks are i.i.d. uniform across ids, so any M of them are equally likely: a simple
random sample. Drawing from "the images outside the screen's top K" works the same way in parts: the whole's sample
lies among the first K + M images of the whole by rank (at most K of those are in the top K), so each part inverts
its own of those, and `invmm merge`, which knows the whole's top K, keeps exactly the whole's sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def sample_rank(seed: int, image_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0sample\0{image_id}".encode()).digest()[:8], "big")


def by_rank(ids: Iterable[str], seed: int) -> list[str]:
    """The ids in sample order (smallest rank first; ties, impossible in practice, by id)."""
    return sorted(ids, key=lambda i: (sample_rank(seed, i), i))


def draw(ids: Iterable[str], m: int, seed: int, exclude: Iterable[str] = ()) -> list[str]:
    """The simple random sample of m of `ids` outside `exclude`, in sample order."""
    out = set(exclude)
    return [i for i in by_rank(ids, seed) if i not in out][:m]


def candidates(population: Iterable[str], m: int, k: int, seed: int) -> set[str]:
    """The ids that can be in the sample of m drawn from a population minus its top k, whatever the top k holds:
    the first k + m of the population by rank. A part of a dataset inverts those of them it holds."""
    return set(by_rank(population, seed)[: k + m])
