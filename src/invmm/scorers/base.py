"""The scorer interface: a model at construction, then a batch of images in, one continuous score per image out.

Like an estimator/attack split: the adapter is the estimator (the model's numerical path), a scorer is an
attack bound to it. Binding happens at construction so a scorer that cannot run on the model fails before
any image is read.

Prompt-level detectors (`PromptScorer`, `needs_image = False`) score an image's caption instead: the model's
response to the caption from pure noise. They take captions alone (`score_captions`), so a dataset of
captions without image files can be scored, and where images are given they are never decoded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from invmm.families.base import CLASS, NOISE_SCHEDULE, TEXT
from invmm.functional import seed_from

CHEAP_BATCH = 16  # images per call for the one-pass scorers

CAPABILITY_NAMES = {NOISE_SCHEDULE: "a DDPM-style noise schedule (epsilon/v/sample prediction)",
                    TEXT: "text conditioning", CLASS: "class conditioning"}


class ScorerError(ValueError):
    """A scorer was asked to run on a model it cannot handle."""


def check_timesteps(scorer: Scorer, **timesteps) -> None:
    """Refuse at construction a timestep outside the model's training schedule 0..T-1: indexing alpha_bar
    there would fail mid-run, or (a negative t) silently read the schedule from its end."""
    n = scorer.adapter.num_train_timesteps
    for key, value in timesteps.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScorerError(f"scorer {scorer.name!r}: {key}={value!r} is not a whole timestep")
        if n is not None and not 0 <= value < n:
            raise ScorerError(f"scorer {scorer.name!r}: {key}={value} is outside the model's 0..{n - 1} timesteps")


@dataclass
class Scorer:
    """Subclasses are dataclasses of their settings and define `name`, `higher_is_better` (whether a higher
    score means member / memorized), `requires` and `_score`."""

    adapter: Any = field(repr=False, compare=False)

    name = "scorer"
    higher_is_better = False
    # capabilities the model must declare (families/base.py): NOISE_SCHEDULE, TEXT, CLASS
    requires: ClassVar[tuple[str, ...]] = ()
    # False: the score depends on the caption only (PromptScorer); the engine then never decodes the image
    needs_image: ClassVar[bool] = True
    # True: every image needs its caption (a caption-free row is refused with a ScorerError naming it)
    needs_caption: ClassVar[bool] = False
    # images per `score` call when a dataset is scored (InvMM overrides it with its own batch setting)
    batch_images = CHEAP_BATCH
    # False: the scorer samples with its own sampler loop, which inference-time mitigations (invmm.mitigations: they
    # act on adapter.generate) do not reach; it is refused on a mitigated model rather than scoring it unmitigated
    follows_mitigations: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.check(self.adapter)

    @classmethod
    def missing(cls, adapter) -> list[str]:
        """What the model lacks for this scorer, in words ([] when it can run)."""
        lacks = [CAPABILITY_NAMES[c] for c in cls.requires if c not in adapter.capabilities]
        if adapter.mitigations and not cls.follows_mitigations:
            lacks.append("a model without --mitigation (it samples outside the mitigated generation path)")
        return lacks

    def check(self, adapter) -> None:
        if adapter.mitigations and not self.follows_mitigations:
            names = ", ".join(m["name"] for m in adapter.mitigations)
            raise ScorerError(f"scorer {self.name!r} samples with its own sampler loop, which the mitigations "
                              f"({names}) do not act on: it would score the model unmitigated. Leave it out of "
                              "the scorers, or score the model without --mitigation")
        missing = self.missing(adapter)
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

    def pop_details(self, image_id: str) -> dict:
        """Numbers the last score of `image_id` was made of, recorded beside it (ScoreRecord.details); once. An
        "error" entry says the image could not be scored, and why."""
        return {}

    def settings(self) -> dict:
        # Fields with repr=False are state (the model, caches), not settings.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}

    def to_json(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better, **self.settings()}


@dataclass
class PromptScorer(Scorer):
    """A caption-level memorization detector on a text-to-image DDPM-family model.

    Subclasses define `_score_caption(adapter, cond, noise) -> (score, details)`: `cond` is the caption's
    conditioning [1, ...], `noise` the starting noise [n, C, H, W]. The noise is one draw per seed and scorer,
    shared by every caption, as the authors draw it (their seed is reset before each prompt): a score is a
    function of the caption alone, so rows with the same caption score the same (and are computed once), and
    two captions are compared on the same noise rather than on different draws.
    """

    n_generations: int = 1  # noise draws per caption; the score averages over them

    needs_image = False
    needs_caption = True
    requires = (NOISE_SCHEDULE, TEXT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_generations, bool) or not isinstance(self.n_generations, int) or self.n_generations < 1:
            raise ScorerError(f"scorer {self.name!r}: n_generations must be a whole number >= 1, got "
                              f"{self.n_generations!r}")
        self._details: dict[str, dict] = {}
        self._done: dict[tuple[int, str], tuple[float, dict]] = {}  # (seed, caption) -> (score, details)

    def score(self, images: torch.Tensor | None, ids: list[str], captions: list[str | None] | None = None,
              seed: int = 0) -> list[float]:
        """The image interface: `images` are ignored (None is fine); see score_captions."""
        return self.score_captions(captions or [None] * len(ids), ids, seed=seed)

    def score_captions(self, captions: list[str | None], ids: list[str], seed: int = 0) -> list[float]:
        """One score per caption, in order; `ids` key the details kept for pop_details."""
        if len(captions) != len(ids):
            raise ValueError(f"{len(captions)} captions for {len(ids)} ids")
        missing = [i for i, c in zip(ids, captions) if not c]
        if missing:
            raise ScorerError(f"scorer {self.name!r} scores captions, and {missing[0]!r} has none; give every row "
                              "a caption")
        noise = None
        scores = []
        for image_id, caption in zip(ids, captions):
            if (seed, caption) not in self._done:
                noise = self.noise(seed) if noise is None else noise
                with torch.no_grad():
                    cond = self.adapter.prompt_embeddings([caption])
                value, details = self._score_caption(self.adapter, cond, noise)
                self._done[seed, caption] = (float(value), details)
            value, details = self._done[seed, caption]
            self._details[image_id] = dict(details)
            scores.append(value)
        return scores

    def noise(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_from(seed, self.name))
        return torch.randn((self.n_generations, *self.adapter.latent_shape), generator=g,
                           device=g.device).to(self.adapter.device)

    def _score_caption(self, adapter, cond, noise: torch.Tensor) -> tuple[float, dict]:
        raise NotImplementedError

    def pop_details(self, image_id: str) -> dict:
        return self._details.pop(image_id, {})
