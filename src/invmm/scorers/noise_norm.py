"""Text-conditional noise-prediction magnitude (Wen et al., "Detecting, Explaining, and Mitigating
Memorization in Diffusion Models", ICLR 2024).

Mean over n generations and the first sampling steps of ||eps_theta(x_t, c) - eps_theta(x_t, empty)||:
a memorized caption pulls the prediction far from the unconditional one from the very first step.
Text-conditional models only. Higher = memorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE, TEXT
from invmm.families.conditions import cond_expand, cond_rows
from invmm.functional import seed_from
from invmm.scorers.base import Scorer


@dataclass
class NoiseNormScorer(Scorer):
    n_generations: int = 4
    n_steps: int = 1
    sampler_steps: int = 50
    guidance: float = 7.5

    name = "noise_norm"
    follows_mitigations = False  # its own sampler loop (Scorer.follows_mitigations)
    higher_is_better = True
    requires = (NOISE_SCHEDULE, TEXT)

    def _score(self, adapter, x0, ids, cond, seed):
        scores = []
        for i, image_id in enumerate(ids):
            g = torch.Generator().manual_seed(seed_from(seed, self.name, image_id))
            x = torch.randn((self.n_generations, *x0.shape[1:]), generator=g, device=g.device).to(adapter.device)
            c = cond_expand(cond_rows(cond, slice(i, i + 1)), self.n_generations)
            u = adapter.uncond_embeddings(self.n_generations)
            scheduler = adapter.sampler(self.sampler_steps)
            norms = []
            for t in scheduler.timesteps[: self.n_steps]:
                tt = t.expand(self.n_generations)
                diff = adapter.eps_prediction(x, tt, c) - adapter.eps_prediction(x, tt, u)
                norms.append(diff.flatten(1).norm(dim=1))
                # Follow the guided sampling trajectory to the next step.
                x = scheduler.step(adapter.guided_output(x, tt, c, self.guidance), t, x).prev_sample
            scores.append(torch.stack(norms).mean())
        return torch.stack(scores)
