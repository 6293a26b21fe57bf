"""Screen, then invert: a cheap scorer ranks the whole dataset, InvMM runs only on the most suspicious part.

Most images of a real audit are not memorized and would each run InvMM's whole budget. A one-pass
membership score (scorers.SCREEN_SCORERS: loss, SimA, SecMI, PIA, CLiD, noise norm, generate-and-compare)
costs a few denoiser calls per image; its ranking decides which images get inverted. The screen's scores live
in RUN/screen (a scores folder, as `evaluate` writes them: resumable, locked), so a resumed audit reuses them
and keeps the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from invmm.data.images import ImageItem
from invmm.errors import InvMMInputError
from invmm.families import load_options
from invmm.runs.scores import ScoreRecord, score_dataset
from invmm.scorers import SCORERS, SCREEN_SCORERS, ScorerError, auto_screen, build_scorer, parse_spec, runnable

SCREEN_DIR = "screen"


@dataclass
class ScreenResult:
    kept: list[ImageItem]
    skipped: list[ImageItem]
    records: dict[str, ScoreRecord]
    scorer: dict  # the scorer's settings and direction
    spec: str  # the scorer as the screen ran it (`auto` resolved)

    def describe(self, keep: float | None, keep_top: int | None) -> dict:
        return {"scorer": self.spec, "settings": self.scorer, "keep": keep, "keep_top": keep_top,
                "kept": len(self.kept), "of": len(self.kept) + len(self.skipped), "folder": SCREEN_DIR}


def suspicion_order(records: list[ScoreRecord], higher_is_better: bool) -> list[ScoreRecord]:
    """Most suspicious first. Images the screen could not score (errors, NaN) come first too: skipping them
    would hide them, so InvMM looks at them."""
    def key(r: ScoreRecord):
        if r.status != "ok" or math.isnan(r.score):
            return (0, 0.0, r.id)
        return (1, -r.score if higher_is_better else r.score, r.id)

    return sorted(records, key=key)


def select_kept(records: list[ScoreRecord], higher_is_better: bool, count: int) -> set[str]:
    """The ids InvMM runs on: the `count` most suspicious, and every image that could not be read (no scorer can
    read it; InvMM records it as the input error it is, in the ledger, without taking a scored image's place)."""
    unreadable = {r.id for r in records if r.error_kind == "input"}
    ordered = suspicion_order([r for r in records if r.id not in unreadable], higher_is_better)
    return unreadable | {r.id for r in ordered[:count]}


def n_kept(n: int, keep: float | None, keep_top: int | None) -> int:
    if (keep is None) == (keep_top is None):
        raise InvMMInputError("--screen needs exactly one of --keep FRACTION or --keep-top K")
    if keep is not None:
        if not 0 < keep <= 1:
            raise InvMMInputError(f"--keep must be a fraction in (0, 1], got {keep}")
        return max(1, math.ceil(keep * n))
    if keep_top < 1:
        raise InvMMInputError(f"--keep-top must be >= 1, got {keep_top}")
    return min(keep_top, n)


def resolve_screen(spec: str, adapter, items: list[ImageItem]) -> str:
    """The screen scorer's spec: `auto` becomes the first screen scorer the model can run (one that needs
    captions only if every image has one); anything but a one-pass scorer is refused."""
    name = parse_spec(spec)[0]
    if name == "auto":
        return auto_screen(adapter, captions=all(it.caption for it in items))
    if name not in SCREEN_SCORERS:
        why = ("InvMM is what runs after it" if name == "invmm" else
               f"{name!r} is not one" if name in SCORERS else f"unknown scorer {name!r}")
        raise InvMMInputError(f"--screen takes a one-pass scorer ({', '.join(SCREEN_SCORERS)}, or auto); {why}")
    return spec


def run_screen(adapter, items: list[ImageItem], spec: str, run_dir: str | Path, *, keep: float | None = None,
               keep_top: int | None = None, seed: int = 0, on_batch=None, ray: dict | None = None) -> ScreenResult:
    """Score every item with the screen scorer into RUN/screen, then split the items into kept and skipped.
    `ray` (the options of run/ray_screen.score_on_ray but the model's) scores them on a Ray cluster."""
    count = n_kept(len(items), keep, keep_top)
    spec = resolve_screen(spec, adapter, items)
    try:
        scorer = build_scorer(spec, adapter)
    except ScorerError as exc:
        usable = runnable(SCREEN_SCORERS, adapter)[0]
        raise InvMMInputError(f"--screen {spec}: {exc}. This model can screen with: {', '.join(usable)} "
                              "(or --screen auto)") from None
    distribute = None
    if ray is not None:
        from invmm.runs.ray_screen import score_on_ray

        def distribute(_scorer, pending):
            return score_on_ray(pending, spec, model=adapter.describe().get("source"), seed=seed,
                                load_options=load_options(adapter), **ray)
    records = score_dataset(adapter, items, [scorer], Path(run_dir) / SCREEN_DIR, seed=seed, on_batch=on_batch,
                            distribute=distribute)
    mine = {r.id: r for r in records if r.scorer == scorer.name}
    kept_ids = select_kept([mine[it.id] for it in items], scorer.higher_is_better, count)
    return ScreenResult([it for it in items if it.id in kept_ids], [it for it in items if it.id not in kept_ids],
                        mine, scorer.to_json(), spec)
