"""SecMI, the t-error attack (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference
Attacks?", ICML 2023).

Deterministic DDIM inversion of x0 up to t_sec in strides of k, one more inversion step to t_sec + k and
one denoising step back to t_sec; the score is ||x_hat_{t_sec} - x_{t_sec}||^2, how far the model's own
deterministic round trip lands from where it left. Members are fitted: lower = member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.adapters.base import NOISE_SCHEDULE
from invmm.scorers.base import Scorer, ScorerError, check_timesteps


def ddim_transfer(adapter, x: torch.Tensor, t_from: int, t_to: int, cond) -> torch.Tensor:
    """One deterministic DDIM move (eta = 0) from timestep t_from to t_to, in either direction.

    x0_hat and eps_hat come from the model at (x, t_from); the sample is re-noised to abar(t_to).
    t_from = -1 stands for the clean image (abar = 1), where eps_hat is taken at timestep 0.
    """
    n = len(x)
    t = torch.full((n,), max(t_from, 0), dtype=torch.long)
    eps = adapter.eps_prediction(x, t, cond)
    abar_from = adapter.alpha_bar(t_from) if t_from >= 0 else torch.tensor(1.0)
    x0_hat = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    abar_to = adapter.alpha_bar(t_to)
    return abar_to.sqrt() * x0_hat + (1 - abar_to).sqrt() * eps


@dataclass
class SecMIScorer(Scorer):
    t_sec: int = 100
    stride: int = 10

    name = "secmi"
    higher_is_better = False
    requires = (NOISE_SCHEDULE,)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_timesteps(self, t_sec=self.t_sec, stride=self.stride)
        if self.stride < 1 or self.t_sec % self.stride:
            # The inversion walks 0, stride, 2 stride, ...: it must land on t_sec itself.
            raise ScorerError(f"scorer 'secmi': stride={self.stride} must be a positive divisor of "
                              f"t_sec={self.t_sec}")
        # The round trip goes one stride above t_sec.
        check_timesteps(self, **{"t_sec + stride": self.t_sec + self.stride})

    def _score(self, adapter, x0, ids, cond, seed):
        x, t = x0, -1
        for t_next in range(0, self.t_sec + 1, self.stride):
            x, t = ddim_transfer(adapter, x, t, t_next, cond), t_next
        x_up = ddim_transfer(adapter, x, self.t_sec, self.t_sec + self.stride, cond)
        x_back = ddim_transfer(adapter, x_up, self.t_sec + self.stride, self.t_sec, cond)
        return (x_back - x).pow(2).flatten(1).sum(1)
