"""Loss-based membership inference (Matsumoto et al., "Membership Inference Attacks against Diffusion
Models", 2023; Hu & Pang, "Membership Inference of Diffusion Models", 2023).

Score: the denoising error ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 at a fixed
t, averaged over a few draws of eps. Members were fitted, so lower = member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE
from invmm.families.conditions import cond_expand, cond_rows
from invmm.scorers.base import Scorer, check_timesteps


@dataclass
class LossScorer(Scorer):
    t: int = 100
    n_draws: int = 4

    name = "loss"
    higher_is_better = False
    requires = (NOISE_SCHEDULE,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_timesteps(self, t=self.t)

    def _score(self, adapter, x0, ids, cond, seed):
        scores = []
        for i, image_id in enumerate(ids):
            g = self.generator(seed, image_id)
            eps = torch.randn((self.n_draws, *x0.shape[1:]), generator=g, device=g.device).to(adapter.device)
            t = torch.full((self.n_draws,), self.t, dtype=torch.long, device=adapter.device)
            x_t = adapter.add_noise(x0[i : i + 1].expand_as(eps), eps, t)
            c = cond_expand(cond_rows(cond, slice(i, i + 1)), self.n_draws) if cond is not None else None
            err = (eps - adapter.eps_prediction(x_t, t, c)).pow(2).flatten(1).sum(1)
            scores.append(err.mean())
        return torch.stack(scores)
