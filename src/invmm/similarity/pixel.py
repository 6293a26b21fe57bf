"""Pixel-space similarity for tiny or grayscale images, where a copy detector trained on photos means nothing."""

from __future__ import annotations

import torch

from invmm.functional import concordance_correlation


class PixelSimilarity:
    """Concordance correlation (Lin 1989) between each sample and the target, in [-1, 1] pixel space; with a
    mask ([1, S, S] in [0, 1], data/masks.py), over the masked region only (its weighted moments)."""

    name = "pixel"

    def __call__(self, samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        samples = samples.detach().float().cpu()
        target = target.detach().float().cpu().expand_as(samples)
        weight = None if mask is None else mask.detach().float().cpu()
        return concordance_correlation(samples, target, weight=weight)

    def mask_problem(self, mask: torch.Tensor) -> str | None:
        """Any non-empty mask will do: the moments are weighted pixel by pixel."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "measure": "concordance correlation coefficient"}
