"""Similarity between generated samples and the target image, for InvMM's success check."""

from __future__ import annotations

from invmm.similarity.pixel import PixelSimilarity
from invmm.similarity.sscd import SSCDSimilarity


def build_similarity(kind: str, *, sscd_model: str | None = None, sscd_resize: int = 32):
    if kind == "pixel":
        return PixelSimilarity()
    if kind == "sscd":
        return SSCDSimilarity(model_path=sscd_model, resize=sscd_resize)
    raise ValueError(f"unknown similarity {kind!r}; expected 'sscd' or 'pixel'")


__all__ = ["PixelSimilarity", "SSCDSimilarity", "build_similarity"]
