"""Generate-and-compare, the extraction view of memorization (Carlini et al., "Extracting Training Data
from Diffusion Models", USENIX Security 2023).

Generate N samples from the model's prior (unconditional, or from the image's caption) and score the
image by its highest similarity to any of them. A memorized image is regenerated: higher = memorized.
The samples depend only on the seed and the caption, so images sharing a caption share one set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from invmm.families.conditions import cond_expand
from invmm.functional import seed_from
from invmm.scorers.base import Scorer
from invmm.similarity import build_similarity


@dataclass
class GenerateCompareScorer(Scorer):
    n_samples: int = 64
    sampler_steps: int = 50
    guidance: float = 1.0
    similarity: str = "pixel"
    sscd_resize: int = 32
    # Samples per (caption, seed), kept across calls so a dataset scored in batches generates them once.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    name = "generate_compare"
    higher_is_better = True
    requires = ()

    def samples(self, caption: str | None, seed: int) -> torch.Tensor:
        adapter = self.adapter
        g = torch.Generator().manual_seed(seed_from(seed, self.name, caption or ""))
        noise = torch.randn((self.n_samples, *adapter.latent_shape), generator=g, device=g.device)
        cond = None
        if adapter.conditional:
            cond = cond_expand(adapter.prompt_embeddings([caption or ""]), self.n_samples)
        return adapter.generate(noise, steps=self.sampler_steps, cond=cond, guidance=self.guidance).cpu()

    def score(self, images, ids, captions=None, seed=0):
        sim = build_similarity(self.similarity, sscd_resize=self.sscd_resize)
        captions = captions or [None] * len(ids)
        scores = []
        with torch.no_grad():
            for image, caption in zip(images, captions):
                key = (caption, seed)
                if key not in self.cache:
                    self.cache[key] = self.samples(caption, seed)
                scores.append(float(sim(self.cache[key], image).max()))
        return scores

