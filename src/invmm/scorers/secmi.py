"""SecMI, the t-error attack (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference
Attacks?", ICML 2023).

As the authors' `secmia.py` walks it: the clean image is taken as x at timestep 0 and inverted by deterministic
DDIM in strides of k to t_sec - k (the timesteps `range(0, t_sec, k)[1:]`); from there one more inversion step
up to t_sec and one denoising step back to t_sec - k. The score is ||x_hat_{t_sec - k} - x_{t_sec - k}||^2
(summed over elements), how far the model's own deterministic round trip lands from where it left. Members
are fitted: lower = member. Their CIFAR setting is t_sec = 100, k = 10 (the round trip 90 <-> 100); their
Stable Diffusion code (SecMI-LDM) compares at 140 after a round trip through 150: `secmi:t_sec=150`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE
from invmm.scorers.base import Scorer, ScorerError, check_timesteps


def ddim_transfer(adapter, x: torch.Tensor, t_from: int, t_to: int, cond) -> torch.Tensor:
    """One deterministic DDIM move (eta = 0) from timestep t_from to t_to, in either direction: x0_hat and
    eps_hat come from the model at (x, t_from), and the sample is re-noised to alpha_bar(t_to), each alpha_bar
    read at its own timestep (secmia.py's ddim_singlestep; timestep 0 is alpha_bar(0), not 1)."""
    t = torch.full((len(x),), t_from, dtype=torch.long, device=x.device)
    eps = adapter.eps_prediction(x, t, cond)
    abar_from, abar_to = adapter.alpha_bar(t_from), adapter.alpha_bar(t_to)
    x0_hat = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
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
        if self.stride < 1 or self.t_sec % self.stride or self.t_sec < 2 * self.stride:
            # The inversion walks stride, 2 stride, ..., t_sec - stride: at least one step, and the round trip's
            # top on t_sec itself.
            raise ScorerError(f"scorer 'secmi': stride={self.stride} must be a positive divisor of "
                              f"t_sec={self.t_sec} at most half of it")

    def _score(self, adapter, x0, ids, cond, seed):
        x, t = x0, 0
        for t_next in range(self.stride, self.t_sec, self.stride):
            x, t = ddim_transfer(adapter, x, t, t_next, cond), t_next
        x_back = ddim_transfer(adapter, ddim_transfer(adapter, x, t, self.t_sec, cond), self.t_sec, t, cond)
        return (x_back - x).pow(2).flatten(1).sum(1)
