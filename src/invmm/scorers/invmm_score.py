"""InvMM itself behind the scorer interface (Ma et al., "An Inversion-based Measure of Memorization for
Diffusion Models", ICCV 2025).

The score is the KL of the fitted noise distribution at the first all-copies check, +inf when the image
was not reproduced within the budget; with repeats, the median over the image's independent inversions.
Lower = more memorized, so `higher_is_better` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from invmm.config import InvMMConfig, check_captions, check_config_for_model, default_config
from invmm.errors import InvMMInputError
from invmm.families.base import CLASS
from invmm.inversion import Inverter, Target
from invmm.records import SCORE_KINDS, ImageSummary, InversionRecord, summarise
from invmm.scorers.base import Scorer, ScorerError
from invmm.similarity import build_similarity


@dataclass
class InvMMScorer(Scorer):
    config: InvMMConfig | None = None  # None: the family's preset with the default similarity
    batch_images: int = 8
    repeats: int = 1  # independent inversions per image; the score is their median (+inf last)
    by: str = "paper"  # or "refined": the refined score (config.refine; inversion/refine.py) is the score
    results: dict[str, ImageSummary] = field(default_factory=dict, repr=False, compare=False)

    name = "invmm"
    higher_is_better = False
    requires = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeats < 1:
            raise ScorerError(f"invmm: repeats must be >= 1, got {self.repeats}")
        if self.config is None:
            self.config = default_config(self.adapter)
        if self.by not in SCORE_KINDS:
            raise ScorerError(f"invmm: by must be one of {SCORE_KINDS}, got {self.by!r}")
        if self.by == "refined" and not self.config.refine:
            self.config = self.config.replace(refine=True)
        try:
            check_config_for_model(self.adapter, self.config)
        except InvMMInputError as exc:
            raise ScorerError(f"invmm: {exc}") from None

    def score(self, images: torch.Tensor, ids: list[str], captions=None, seed: int = 0) -> list[float]:
        cfg = self.config if seed == self.config.seed else self.config.replace(seed=seed)
        sim = build_similarity(cfg.similarity, sscd_model=cfg.sscd_model, sscd_resize=cfg.sscd_resize)
        # `captions` holds what each image is conditioned on: its class for a class-conditional model.
        given = captions or [None] * len(ids)
        classes = CLASS in self.adapter.capabilities
        targets = [Target(id=i, pixels=x, caption=None if classes else c, class_label=c if classes else None,
                          repeat=r) for i, x, c in zip(ids, images, given) for r in range(self.repeats)]
        try:
            check_captions(self.adapter, cfg, targets)
        except InvMMInputError as exc:
            raise ScorerError(f"invmm: {exc}") from None
        lines: list[InversionRecord] = []
        Inverter(self.adapter, cfg, sim, batch_images=self.batch_images).run(
            targets, on_done=lambda o: lines.append(o.result))
        done = {r.id: r for r in summarise(lines, by=self.by)}
        self.results.update(done)
        # A diverged optimisation (status error) has no score; NaN keeps it out of every metric.
        return [done[i].score if done[i].status == "ok" else math.nan for i in ids]

    def pop_details(self, image_id: str) -> dict:
        result = self.results.pop(image_id, None)  # recorded beside the score: no need to keep it
        if result is None:
            return {}
        details = {"success": result.success, "steps": result.steps, "min_similarity": result.min_similarity,
                   "guidance_scale": result.guidance_scale, "repeats": result.n_repeats,
                   "successes": result.successes,
                   # None = +inf (not reproduced in that repeat)
                   "repeat_scores": [r["score"] if r["success"] else None for r in result.repeats],
                   **({"refined_score": None if math.isinf(result.refined_score) else result.refined_score,
                       "refined_success": result.refined_success} if result.refined_score is not None else {}),
                   # --early-stop: an inf that stopped early is a prediction, not a completed budget
                   **({"early_stop": result.early_stop} if result.early_stop is not None else {})}
        return {**details, "error": result.error} if result.status != "ok" else details

    def settings(self) -> dict:
        return {"config": self.config.to_json(), "batch_images": self.batch_images, "repeats": self.repeats,
                **({"by": self.by} if self.by != "paper" else {})}
