"""Pixel-space similarity for tiny or grayscale images, where a copy detector trained on photos means nothing."""

from __future__ import annotations

import torch

from invmm.functional import concordance_correlation


class PixelSimilarity:
    """Concordance correlation (Lin 1989) between each sample and the target, in [-1, 1] pixel space."""

    name = "pixel"

    def __call__(self, samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        samples = samples.detach().float().cpu()
        target = target.detach().float().cpu().expand_as(samples)
        return concordance_correlation(samples, target)

    def describe(self) -> dict:
        return {"name": self.name, "measure": "concordance correlation coefficient"}
