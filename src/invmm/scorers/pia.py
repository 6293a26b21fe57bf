"""PIA, proximal initialisation attack (Kong et al., "An Efficient Membership Inference Attack for the
Diffusion Model by Proximal Initialization", ICLR 2024).

eps_0 = eps_theta(x0, 0) is the model's own noise guess at t = 0; x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps_0 at t = 200; the score is || eps_0 - eps_theta(x_t, t) ||_p with p = 4 as in the
authors' code. Deterministic. Lower = member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE
from invmm.scorers.base import Scorer, check_timesteps


@dataclass
class PIAScorer(Scorer):
    t: int = 200
    p: float = 4.0

    name = "pia"
    higher_is_better = False
    requires = (NOISE_SCHEDULE,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_timesteps(self, t=self.t)

    def _score(self, adapter, x0, ids, cond, seed):
        n = len(x0)
        eps0 = adapter.eps_prediction(x0, torch.zeros(n, dtype=torch.long, device=x0.device), cond)
        t = torch.full((n,), self.t, dtype=torch.long, device=x0.device)
        x_t = adapter.add_noise(x0, eps0, t)
        diff = (eps0 - adapter.eps_prediction(x_t, t, cond)).flatten(1)
        return diff.norm(p=self.p, dim=1)
