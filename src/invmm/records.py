"""What an inversion leaves, as records with one job each, and their JSON form (where +inf must survive).

- `InversionRecord`: one inversion (one repeat of one image): a ledger line of results.jsonl.
- `ImageSummary`: one image over its repeats (`summarise`): the representative repeat's record with the median
  score, the success count and the interval of the median. Readers (report, export, compare) show these.
- `CheckRecord`: one success check, with named fields; written as the list results.jsonl has always held.
- `calls`: the model calls an inversion spent (inversion/cost.py counts them), summed and weighed here.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from invmm.errors import InvMMInputError
from invmm.repeats import median_interval, median_score


def region_counts(records) -> dict:
    """{"whole": n, "mask": m} over records with a score: how many of each kind a run or ranking holds."""
    out = {"whole": 0, "mask": 0}
    for r in records:
        out[r.measured_on] += 1
    return out


MIXED_REGIONS_NOTE = ("measured on two kinds of region: a score under a mask and a whole-image score are on "
                      "different scales (the KL is averaged over every dimension, while under a mask only the "
                      "masked cells are pulled to the target), so they are not ranked against each other by "
                      "meaning; each row says which it is")


# What a summary's `score` is: the paper's (the KL at the first passing check) or the refined score
# (inversion/refine.py), for runs made with the refinement.
SCORE_KINDS = ("paper", "refined")

# --- model calls (see inversion/cost.py for what each counts) ---
CALL_FIELDS = ("opt_forward", "opt_backward", "check_forward", "map_forward", "stop_forward", "vae_encode",
               "vae_decode", "text_encoder", "similarity")


def forward_equivalents(calls: dict) -> int:
    """A backward costs about two forwards: opt_forward + 2 opt_backward + check_forward + map_forward (the
    memorization map's samples) + stop_forward (early stopping's samples)."""
    return int(calls.get("opt_forward", 0) + 2 * calls.get("opt_backward", 0) + calls.get("check_forward", 0)
               + calls.get("map_forward", 0) + calls.get("stop_forward", 0))


def sum_calls(many) -> Counter:
    total = Counter({k: 0 for k in CALL_FIELDS})
    for calls in many:
        for k in CALL_FIELDS:
            total[k] += int((calls or {}).get(k, 0))
    return total


class CheckRecord(NamedTuple):
    """One success check. The ledger writes it as a list, [step, kl, lambda, min similarity, rec mean]; lines
    written before the reconstruction mean was recorded have four values."""

    step: int
    kl: float
    lam: float
    min_similarity: float  # the worst sample's similarity (over the samples generated before it was decided)
    rec_mean: float | None = None  # the window mean of L_rec at the check

    @classmethod
    def of(cls, values) -> CheckRecord:
        return values if isinstance(values, cls) else cls(*values)

    def to_json(self) -> list:
        return list(self) if self.rec_mean is not None else list(self)[:4]


@dataclass
class InversionRecord:
    """One inversion of one image: a line of results.jsonl."""

    id: str
    path: str
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    error_kind: str | None = None  # "input" (the file/option is at fault) or "numerical"
    score: float = math.inf  # KL at the first success; +inf: not reproduced within the budget
    success: bool = False
    steps: int = 0
    final_lambda: float | None = None
    kl: float | None = None  # KL of the distribution at the last step, success or not
    min_similarity: float | None = None
    similarities: list[float] = field(default_factory=list)  # the check samples of the last check
    checks: list[CheckRecord] = field(default_factory=list)
    seed: int | None = None
    image_seed: int | None = None
    seconds: float | None = None
    resized: bool = False
    original_size: list[int] | None = None
    caption: str | None = None
    label: str | None = None  # from the dataset manifest, when it has labels
    prompt_mode: str | None = None  # text-to-image: "caption" (given) or "inverted" (soft prompt learned)
    prompt: str | None = None  # the caption used, or the inverted soft prompt's argmax tokens as text
    class_mode: str | None = None  # class-conditional: "known" (given) or "inverted" (class distribution learned)
    class_label: int | None = None  # the class used, or the inverted distribution's most likely class
    class_name: str | None = None  # its name, where the model names its classes
    guidance_scale: float | None = None  # the guidance scale at which the success check passed
    model: str | None = None
    calls: dict = field(default_factory=dict)  # model calls spent on this inversion (inversion/cost.py)
    check_skips: dict = field(default_factory=dict)  # checks an opt-in shortcut decided: {"preview": n, "rec": m}
    repeat: int = 0  # which of the image's independent inversions (streams) this is
    # With config.refine: the refined score (inversion/refine.py; +inf when not reproduced) and how it was found.
    refined_score: float | None = None
    # The estimated chance that the paper's check passes within the budget on this path (over the checks the
    # refined score was estimated from); None where the paper's check never passed (refined_score inf).
    refined_success: float | None = None
    refine: dict | None = None
    meta: dict | None = None  # the dataset's other fields for this image (a shard's .json: url, sizes, ...)
    # Partial memorization: the mask the check compared over ({source, path, sha256, fraction}; None: the whole
    # image) and the share of pixels the memorization map marks as reproduced (check.py).
    mask: dict | None = None
    reproduced_fraction: float | None = None
    # With config.early_stop (inversion/early_stop.py): {stopped, first_sign, best_similarity} and, for an inversion
    # stopped before its budget because the rule predicted it would not be reproduced, {rule, step, patience, beta}.
    # A stopped inversion's score is inf and its steps those it ran.
    early_stop: dict | None = None

    def __post_init__(self):
        self.checks = [CheckRecord.of(c) for c in self.checks]

    @property
    def measured_on(self) -> str:
        """What the check compared: "mask" (the region of the mask `mask` names, by its sha256) or "whole" (the
        whole image; also --mask auto's images kept whole). Scores of the two are on different scales: the KL is
        averaged over every dimension while only the masked cells are pulled to the target."""
        return "mask" if self.mask and self.mask.get("sha256") else "whole"

    @property
    def region(self) -> tuple:
        """What must match for two scores of one image to be compared: the whole image, or a mask's content."""
        return ("mask", self.mask["sha256"]) if self.measured_on == "mask" else ("whole",)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["checks"] = [c.to_json() for c in self.checks]
        d["score"], d["score_is_inf"] = score_to_json(self.score if self.status == "ok" else math.nan)
        if not self.check_skips:  # the default, exact checks: lines stay as they were
            d.pop("check_skips")
        if self.class_mode is None:  # not a class-conditional model
            for name in ("class_mode", "class_label", "class_name"):
                d.pop(name)
        for name in ("meta", "mask", "reproduced_fraction", "early_stop"):  # lines without them stay as they were
            if d[name] is None:
                d.pop(name)
        if self.refined_score is None:  # no refinement: lines stay as they were
            d.pop("refined_score")
            d.pop("refined_success")
            d.pop("refine")
        else:
            d["refined_score"], d["refined_score_is_inf"] = score_to_json(
                self.refined_score if self.status == "ok" else math.nan)
        return d

    @classmethod
    def from_json(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["score"] = score_from_json(d.get("score"), d.get("score_is_inf", False))
        for name in ("score_low", "score_high", "refined_score"):
            if name in names and (d.get(name) is not None or d.get(f"{name}_is_inf")):
                values[name] = score_from_json(d.get(name), d.get(f"{name}_is_inf", False))
        return cls(**values)


@dataclass
class ImageSummary(InversionRecord):
    """One image over its repeats: the representative repeat's record (the one at the lower median), with the
    median score and what the repeats say about it."""

    n_repeats: int = 1
    successes: int | None = None  # repeats that reproduced the image
    score_low: float | None = None  # order-statistic interval of the median score; +inf allowed
    score_high: float | None = None
    interval_coverage: float | None = None
    repeats: list[dict] = field(default_factory=list)  # per repeat: score (None = inf), success, steps, checks...

    def to_json(self) -> dict:
        d = super().to_json()
        d["repeats"] = [{**r, "checks": [CheckRecord.of(c).to_json() for c in r.get("checks", [])]}
                        for r in self.repeats]
        for name in ("score_low", "score_high"):
            if d.get(name) is not None:
                d[name], d[f"{name}_is_inf"] = score_to_json(d[name])
        return d


def summarise(records, by: str = "paper") -> list[ImageSummary]:
    """One summary per image from its ledger records (one per repeat), in the order images first appear.

    by="refined": every `score` below is the refined score instead (the run must have been made with it), so
    that readers that rank, plot or compare by `score` do so by the refined score.

    The summary is the representative repeat (the one at the lower median) with: score = the median over the
    repeats that ran without error, success = that median is finite, the per-repeat outcomes in `repeats`, the
    success count, the interval of the median with its coverage, and the repeats' summed seconds and calls. An
    image whose every repeat failed with an error stays an error.
    """
    if by not in SCORE_KINDS:
        raise InvMMInputError(f"the score to rank by must be one of {SCORE_KINDS}, got {by!r}")
    records = list(records)
    if by == "refined":
        missing = [r.id for r in records if r.status == "ok" and r.refined_score is None]
        if missing:
            raise InvMMInputError(f"{len(missing)} inversion(s) have no refined score ({', '.join(missing[:3])}...): "
                                  "the run was made without the refinement; rank by the paper's score, or rerun "
                                  "with --refine")
        records = [dataclasses.replace(r, score=r.refined_score) if r.status == "ok" else r for r in records]
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r.id, []).append(r)
    out = []
    for reps in groups.values():
        reps = sorted(reps, key=lambda r: r.repeat)
        ok = [r for r in reps if r.status == "ok"]
        if not ok:
            out.append(_summary(reps[0], n_repeats=len(reps), successes=0, repeats=[_repeat(r) for r in reps]))
            continue
        scores = [r.score for r in ok]
        order = sorted(ok, key=lambda r: (r.score, r.repeat))
        med, iv = median_score(scores), median_interval(scores)
        refined = [r.refined_score for r in ok if r.refined_score is not None]
        chances = [r.refined_success for r in ok if r.refined_success is not None]
        out.append(_summary(
            order[(len(order) - 1) // 2], score=med, success=math.isfinite(med), n_repeats=len(reps),
            successes=sum(r.success for r in ok), repeats=[_repeat(r) for r in reps],
            score_low=iv.low if iv else None, score_high=iv.high if iv else None,
            interval_coverage=round(iv.coverage, 4) if iv else None,
            seconds=round(sum(r.seconds or 0.0 for r in reps), 3), calls=dict(sum_calls(r.calls for r in reps)),
            check_skips=dict(sum((Counter(r.check_skips) for r in reps), Counter())),
            refined_score=median_score(refined) if len(refined) == len(ok) else None,
            refined_success=float(np.median(chances)) if chances else None,
        ))
    return out


def _summary(record: InversionRecord, **changes) -> ImageSummary:
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(InversionRecord)}
    return ImageSummary(**{**values, **changes})


def _repeat(r: InversionRecord) -> dict:
    return {"repeat": r.repeat, "status": r.status, "success": r.success,
            "score": r.score if math.isfinite(r.score) else None, "steps": r.steps, "kl": r.kl,
            "min_similarity": r.min_similarity, "image_seed": r.image_seed, "seconds": r.seconds,
            "checks": r.checks,
            **({"refined_score": r.refined_score if math.isfinite(r.refined_score) else None,
                "refined_success": r.refined_success} if r.refined_score is not None else {}),
            **({"early_stop": r.early_stop} if r.early_stop is not None else {})}


def score_to_json(score: float) -> tuple[float | None, bool]:
    """(value, is_inf) for a JSON record. JSON has no infinity: +inf is written as null plus an explicit flag,
    so readers never mistake it for 0; NaN (no score) is null without the flag."""
    return (score if math.isfinite(score) else None), (math.isinf(score) and score > 0)


def score_from_json(value: float | None, is_inf: bool) -> float:
    return math.inf if is_inf else (math.nan if value is None else float(value))
