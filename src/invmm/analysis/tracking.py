"""Memorization across a training run's checkpoints: when each image started to be reproduced, whether it stayed,
and the last checkpoint a policy allows (the groundwork of `invmm track`). Pure functions over per-checkpoint
outcomes; the counts' bounds come from each checkpoint's own assessment (analysis/assess.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointOutcome:
    step: int
    reproduced: frozenset[str]  # the images reproduced within the budget at this checkpoint
    measured: frozenset[str]  # the images with an outcome at this checkpoint (reproduced or not)
    upper: float | None = None  # the one-sided upper bound on the count, from the checkpoint's assessment
    population: int | None = None  # the number of images that bound is of


def onsets(outcomes: list[CheckpointOutcome]) -> dict[str, dict]:
    """Per image: `onset`, the first checkpoint step at which it is reproduced (None: never), and `stays`, whether
    every later checkpoint that measured it reproduces it too (None when never reproduced). Checkpoints are taken in
    step order; one that did not measure an image says nothing about it."""
    ordered = sorted(outcomes, key=lambda o: o.step)
    images = sorted(set().union(*(o.measured for o in ordered))) if ordered else []
    out = {}
    for image in images:
        seen = [(o.step, image in o.reproduced) for o in ordered if image in o.measured]
        onset = next((step for step, hit in seen if hit), None)
        stays = None if onset is None else all(hit for step, hit in seen if step >= onset)
        out[image] = {"onset": onset, "stays": stays, "reproduced_at": [step for step, hit in seen if hit]}
    return out


def last_safe(outcomes: list[CheckpointOutcome], max_rate: float) -> int | None:
    """The last checkpoint of the run's first stretch whose upper bound on the count stays within max_rate of its
    population: training up to it kept the policy at every checkpoint; None when the first checkpoint already breaks
    it (or has no bound)."""
    safe = None
    for o in sorted(outcomes, key=lambda o: o.step):
        if o.upper is None or not o.population or o.upper > max_rate * o.population:
            break
        safe = o.step
    return safe
