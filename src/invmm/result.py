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
    checks: list[list[float]] = field(default_factory=list)  # [step, kl, lambda, min similarity] per check
    seed: int | None = None
    image_seed: int | None = None
    seconds: float | None = None
    resized: bool = False
    original_size: list[int] | None = None
    caption: str | None = None
    label: str | None = None  # from the dataset manifest, when it has labels
    prompt_mode: str | None = None  # text-to-image: "caption" (given) or "inverted" (soft prompt learned)
    prompt: str | None = None  # the caption used, or the inverted soft prompt's argmax tokens as text
    guidance_scale: float | None = None  # the guidance scale at which the success check passed
    model: str | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["score"], d["score_is_inf"] = score_to_json(self.score if self.status == "ok" else math.nan)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["score"] = score_from_json(d.get("score"), d.get("score_is_inf", False))
        return cls(**values)


def score_to_json(score: float) -> tuple[float | None, bool]:
    """(value, is_inf) for a JSON record. JSON has no infinity: +inf is written as null plus an explicit flag,
    so readers never mistake it for 0; NaN (no score) is null without the flag."""
    return (score if math.isfinite(score) else None), (math.isinf(score) and score > 0)


def score_from_json(value: float | None, is_inf: bool) -> float:
    return math.inf if is_inf else (math.nan if value is None else float(value))
