"""One image's outcome, and its JSON form (where +inf must survive the round trip)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class Result:
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
    # per check: [step, kl, lambda, min similarity, window mean of L_rec]; older lines lack the last
    checks: list[list[float]] = field(default_factory=list)
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
    calls: dict = field(default_factory=dict)  # model calls spent on this inversion (invmm.cost)
    check_skips: dict = field(default_factory=dict)  # checks an opt-in shortcut decided: {"preview": n, "rec": m}
    repeat: int = 0  # which of the image's independent inversions (streams) this is
    # An image's summary over its repeats (repeats.combine); a ledger line holds one repeat and none of these.
    n_repeats: int = 1
    successes: int | None = None  # repeats that reproduced the image
    score_low: float | None = None  # order-statistic interval of the median score; +inf allowed
    score_high: float | None = None
    interval_coverage: float | None = None
    repeats: list[dict] = field(default_factory=list)  # per repeat: score (None = inf), success, steps, checks...

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["score"], d["score_is_inf"] = score_to_json(self.score if self.status == "ok" else math.nan)
        if not self.repeats:
            for name in SUMMARY_FIELDS:
                d.pop(name)
        if not self.check_skips:  # the default, exact checks: lines stay as they were
            d.pop("check_skips")
        if self.class_mode is None:  # not a class-conditional model
            for name in ("class_mode", "class_label", "class_name"):
                d.pop(name)
        for name in ("score_low", "score_high"):
            if d.get(name) is not None:
                d[name], d[f"{name}_is_inf"] = score_to_json(d[name])
        return d

    @classmethod
    def from_json(cls, d: dict) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["score"] = score_from_json(d.get("score"), d.get("score_is_inf", False))
        for name in ("score_low", "score_high"):
            if d.get(name) is not None or d.get(f"{name}_is_inf"):
                values[name] = score_from_json(d.get(name), d.get(f"{name}_is_inf", False))
        return cls(**values)


SUMMARY_FIELDS = ("n_repeats", "successes", "score_low", "score_high", "interval_coverage", "repeats")


def score_to_json(score: float) -> tuple[float | None, bool]:
    """(value, is_inf) for a JSON record. JSON has no infinity: +inf is written as null plus an explicit flag,
    so readers never mistake it for 0; NaN (no score) is null without the flag."""
    return (score if math.isfinite(score) else None), (math.isinf(score) and score > 0)


def score_from_json(value: float | None, is_inf: bool) -> float:
    return math.inf if is_inf else (math.nan if value is None else float(value))
