"""The scorer interface: a model at construction, then a batch of images in, one continuous score per image out.

Like an estimator/attack split: the adapter is the estimator (the model's numerical path), a scorer is an
attack bound to it. Binding happens at construction so a scorer that cannot run on the model fails before
any image is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from invmm.adapters.base import NOISE_SCHEDULE, TEXT
from invmm.functional import seed_from

CAPABILITY_NAMES = {NOISE_SCHEDULE: "a DDPM-style noise schedule (epsilon/v/sample prediction)",
                    TEXT: "text conditioning"}


class ScorerError(ValueError):
    """A scorer was asked to run on a model it cannot handle."""


@dataclass
class Scorer:
    """Subclasses are dataclasses of their settings and define `name`, `higher_is_better` (whether a higher
    score means member / memorized), `requires` and `_score`."""

    adapter: Any = field(repr=False, compare=False)

    name = "scorer"
    higher_is_better = False
    # capabilities the model must declare (adapters/base.py): NOISE_SCHEDULE, TEXT
    requires: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.check(self.adapter)

    def check(self, adapter) -> None:
        missing = [CAPABILITY_NAMES[c] for c in self.requires if c not in adapter.capabilities]
        if missing:
            raise ScorerError(
                f"scorer {self.name!r} needs {' and '.join(missing)}; the {adapter.family} model "
                f"({adapter.describe().get('source') or type(adapter).__name__}) has none. "
                f"Leave {self.name!r} out of the scorers for this model"
            )

    def generator(self, seed: int, image_id: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed_from(seed, self.name, image_id))

    def score(self, images: torch.Tensor, ids: list[str], captions: list[str | None] | None = None,
              seed: int = 0) -> list[float]:
        """Scores of [K, C, S, S] images in [-1, 1] (model-ready), in order."""
        adapter = self.adapter
        captions = captions or [None] * len(ids)
        with torch.no_grad():
            x0 = adapter.encode(images)
            cond = None
            if adapter.conditional:
                cond = adapter.prompt_embeddings([c or "" for c in captions])
            return [float(v) for v in self._score(adapter, x0, ids, cond, seed)]

    def _score(self, adapter, x0: torch.Tensor, ids: list[str], cond, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict:
        # Fields with repr=False are state (the model, caches), not settings.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}

    def to_json(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better, **self.settings()}

