"""SimA, the score-norm attack (Rao, Qu & Moyer, "Score-based Membership Inference on Diffusion Models", 2025;
code: github.com/mx-ethan-rao/SimA).

One query: the model's noise (score) prediction at the clean image x0 itself, given as if it were x_t at a
small timestep t, and its p-norm, ||eps_theta(x0, t, c)||_p with p = 4 as in the authors' code (they sum
|eps|^4, the 4th power of this norm: the same ranking). Near a training image the denoiser's implied
kernel-weighted mean of training images is the image itself, so the predicted noise is small there: lower =
member. The authors sweep t over 0, 10, ..., 190 (Stable Diffusion; 0 to 200 or 600 for DDPMs) and report the
best t, which needs labels; here t is one setting, default 100, inside that sweep (at t = 0 the clean image is
barely off the data and the norm says little). Text-to-image models take the caption as the condition.

n_draws > 0: the Monte-Carlo variant; the prediction at n_draws noised copies sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps (one draw each, from the image's stream) is averaged, then normed. n_draws = 1 is the
authors' "Epsilon" estimator (one noised query).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE
from invmm.families.conditions import cond_expand, cond_rows
from invmm.scorers.base import Scorer, ScorerError, check_timesteps


@dataclass
class SimAScorer(Scorer):
    t: int = 100
    p: float = 4.0
    n_draws: int = 0  # 0: one query at the clean image (SimA); N: the prediction averaged over N noised copies

    name = "sima"
    higher_is_better = False
    requires = (NOISE_SCHEDULE,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_timesteps(self, t=self.t)
        if isinstance(self.n_draws, bool) or not isinstance(self.n_draws, int) or self.n_draws < 0:
            raise ScorerError(f"scorer 'sima': n_draws={self.n_draws!r} must be 0 (one query at the clean image) "
                              "or a number of noised copies")
        if not isinstance(self.p, (int, float)) or not self.p > 0:
            raise ScorerError(f"scorer 'sima': p={self.p!r} must be a positive norm order")

    def _score(self, adapter, x0, ids, cond, seed):
        if self.n_draws == 0:
            eps = adapter.eps_prediction(x0, torch.full((len(x0),), self.t, dtype=torch.long, device=x0.device),
                                       cond)
        else:
            eps = torch.cat([self._mean_prediction(adapter, x0[i : i + 1], image_id,
                                                   None if cond is None else cond_rows(cond, slice(i, i + 1)),
                                                   seed) for i, image_id in enumerate(ids)])
        return eps.flatten(1).norm(p=self.p, dim=1)

    def _mean_prediction(self, adapter, x0, image_id, cond, seed):
        n = self.n_draws
        g = self.generator(seed, image_id)
        noise = torch.randn((n, *x0.shape[1:]), generator=g, device=g.device).to(adapter.device)
        t = torch.full((n,), self.t, dtype=torch.long, device=adapter.device)
        x_t = adapter.add_noise(x0.expand_as(noise), noise, t)
        return adapter.eps_prediction(x_t, t, None if cond is None else cond_expand(cond, n)).mean(0, keepdim=True)
