"""A model-level audit's design: which images it inverts, and what run.json records of it (`design`), so that
`invmm assess` can turn the ledger into a statement about the whole population (analysis/population.py).

Two strata. The census stratum is counted whole: every image (a plain audit), or the screen's top K (with the
images the screen could not read, which InvMM records as input errors). The rest is represented by a simple random
sample of M of its images without replacement, drawn by a seeded hash of the ids (data/sampling.py), or not at all
(a screen's top K alone: a lower bound only). In a `--shard` part the sample's candidates are the part's own among
the first K + M of the whole dataset by rank; `invmm merge` draws the whole's sample from them.
"""

from __future__ import annotations

from invmm.data import sampling
from invmm.errors import InvMMInputError
from invmm.store.folder import ids_sha256

EVERYTHING, SCREEN_TOP, NONE = "everything", "screen top K", "none"


def plan(items: list, *, kept: list | None, sample: int | None, seed: int, population: list[str] | None = None,
         keep_top: int | None = None) -> tuple[list, dict]:
    """The items to invert (the census stratum first, then the sample) and run.json's `design`.

    `items`: the images this run holds (a part's, in a `--shard` run); `kept`: the screen's kept items (None: no
    screen); `sample`: M (None: no sample); `population`: the whole dataset's ids when `items` are a part of it.
    """
    part = population is not None
    population = list(population) if part else [it.id for it in items]
    if sample is not None and sample < 1:
        raise InvMMInputError(f"--sample must be >= 1, got {sample}")
    census = list(items) if kept is None and sample is None else list(kept or [])
    census_ids = {it.id for it in census}
    frame = len(population) - (len(census_ids) if not part else (keep_top or 0))
    chosen = []
    if sample is not None:
        if not part:
            if sample > len(items) - len(census_ids):
                raise InvMMInputError(f"--sample {sample}: only {len(items) - len(census_ids)} images lie outside the "
                                      "census stratum; sample fewer, or audit them all (no --sample)")
            wanted = set(sampling.draw([it.id for it in items], sample, seed, exclude=census_ids))
        else:  # the whole's sample lies among these; merge keeps exactly it
            first = sampling.by_rank(population, seed)[: (keep_top or 0) + sample]
            wanted = set(first) - census_ids
            rank_limit = sampling.sample_rank(seed, first[-1]) if first else 0
        chosen = [it for it in items if it.id in wanted]
        chosen = sorted(chosen, key=lambda it: sampling.sample_rank(seed, it.id))
    kind = EVERYTHING if kept is None and sample is None else (SCREEN_TOP if kept is not None else NONE)
    design = {
        "population": len(population), "population_ids_sha256": ids_sha256(population), "seed": seed,
        "census": {"kind": kind, "n": len(census_ids) if kind != EVERYTHING else len(population),
                   **({"ids": sorted(census_ids)} if kind == SCREEN_TOP else {})},
        "sample": None if sample is None else {
            "m": sample, "frame": frame,
            **({"candidates": [it.id for it in chosen], "rank_limit": rank_limit} if part
               else {"ids": [it.id for it in chosen]})},
        **({"part": True} if part else {}),
    }
    return census + chosen, design


def strata(design: dict | None) -> dict[str, str]:
    """id -> "census" or "sample" for the images a design inverted (empty for a census of everything: every
    image is census, which readers assume when an id is not listed)."""
    if not design:
        return {}
    out = {i: "census" for i in (design.get("census") or {}).get("ids") or []}
    sample = design.get("sample") or {}
    out.update({i: "sample" for i in sample.get("ids") or sample.get("candidates") or []})
    return out


def merge(designs: list[dict], kept: set[str] | None, inverted: set[str]) -> dict | None:
    """The whole's design from its parts': the census is the whole's top K (`kept`; None: no screen), the sample the
    first M by rank of the whole outside it, which must all have been inverted by some part."""
    first = designs[0]
    if any(d is None for d in designs):
        return None
    sample = first.get("sample")
    census_ids = sorted(kept) if kept is not None else None
    out = {k: v for k, v in first.items() if k not in ("part", "census", "sample")}
    kind = (first.get("census") or {}).get("kind")
    out["census"] = {"kind": kind, "n": len(census_ids) if census_ids is not None else (
        first["population"] if kind == EVERYTHING else 0), **({"ids": census_ids} if census_ids is not None else {})}
    out["sample"] = None
    if sample:
        m, seed = sample["m"], first["seed"]
        pool = inverted - (kept or set())
        ids = sampling.by_rank(pool, seed)[:m]
        limit = sample.get("rank_limit")
        beyond = [i for i in ids if limit is not None and sampling.sample_rank(seed, i) > limit]
        if len(ids) < min(m, sample["frame"]) or beyond:
            # the parts inverted the first K + M of the whole by rank; more of them than K fell in the census (images
            # the screen could not read join it), so the whole's sample reaches past what any part inverted
            raise InvMMInputError(f"the parts hold {len(ids) - len(beyond)} of the {m} sample images the whole needs "
                                  "(its census took more than K of the images ranked first: unreadable ones join it); "
                                  "rerun the parts with a larger --sample, or audit the dataset unsharded")
        out["sample"] = {"m": m, "frame": first["population"] - len(kept or ()), "ids": ids}
    return out
