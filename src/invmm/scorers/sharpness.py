"""Sharpness of the prompt's log-density at the start of sampling (Jeon, Kim & No, "Understanding and Mitigating
Memorization in Generative Models via Sharpness of Probability Landscapes", ICML 2025).

With the scores s_c(x) = -eps(x, t, c) / sigma_t and s_u(x) = -eps(x, t, empty) / sigma_t, their difference
s_delta = s_c - s_u and its Jacobian H_delta = H_c - H_u (the Jacobian of a score is the Hessian of its
log-density), the detection statistic is

    ||H_delta(x_T) s_delta(x_T)||     at the first sampling timestep, on pure noise x_T ~ N(0, I),

averaged over the noise draws (and, with n_steps > 1, over the first steps of the guided DDIM trajectory).
A memorized prompt makes the conditional density sharp: H_c has large negative eigenvalues along which the
score difference points, so the product amplifies Wen et al.'s ||s_delta|| by the curvature. One Hessian-vector
product per draw, by forward-mode differentiation of the score (torch.func.jvp), as the authors compute it;
no Hessian is formed. Text-to-image DDPM-family models. Higher = memorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from invmm.families.conditions import cond_cat, cond_expand
from invmm.scorers.anisotropy import sampler_grid
from invmm.scorers.base import PromptScorer, ScorerError


def score_hvp(score_fn, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(x), J_s(x) v) for a score function s = grad log p: J_s v is the Hessian-vector product
    (grad^2 log p)(x) v, by one forward-mode pass."""
    # The fused attention kernels (flash / memory-efficient, CPU and GPU) have no forward-mode derivative;
    # the authors switch them off on GPU for the same reason.
    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(score_fn, (x,), (v,))


@dataclass
class SharpnessScorer(PromptScorer):
    n_generations: int = 4
    n_steps: int = 1  # sampling steps the statistic is averaged over (the authors' hvp_sampling_num)
    sampler_steps: int = 50
    guidance: float = 7.5  # only moves the trajectory between steps when n_steps > 1

    name = "sharpness"
    follows_mitigations = False  # its own sampler loop (Scorer.follows_mitigations)
    higher_is_better = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guidance = float(self.guidance)
        sampler_grid(self)
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or \
                not 1 <= self.n_steps <= self.sampler_steps:
            raise ScorerError(f"scorer 'sharpness': n_steps={self.n_steps!r} must be a whole number in "
                              f"1..sampler_steps ({self.sampler_steps})")

    def _score_caption(self, adapter, cond, noise):
        n = len(noise)
        c, u = cond_expand(cond, n), adapter.uncond_embeddings(n)
        pair = cond_cat([u, c])
        scheduler = adapter.sampler(self.sampler_steps)
        x, values, score_norms = noise, [], []
        for t in scheduler.timesteps[: self.n_steps]:
            tt = t.expand(2 * n)
            sigma = (1 - adapter.alpha_bar(t)).sqrt()

            def scores(z, tt=tt, sigma=sigma):
                # [s_u(z); s_c(z)]: the same z under both conditionings, so one JVP gives H_u v and H_c v.
                return -adapter.eps_prediction(torch.cat([z, z]), tt, pair) / sigma

            with torch.no_grad():
                s_u, s_c = scores(x).chunk(2)
                s_delta = s_c - s_u
                _, hv = score_hvp(scores, x, s_delta)
            h_u, h_c = hv.chunk(2)
            values.append((h_c - h_u).flatten(1).norm(dim=1).mean())
            score_norms.append(s_delta.flatten(1).norm(dim=1).mean())
            if len(values) < self.n_steps:
                with torch.no_grad():
                    x = scheduler.step(adapter.guided_output(x, t.expand(n), c, self.guidance), t, x).prev_sample
        value = torch.stack(values).mean().item()
        return value, {"score_diff_norm": torch.stack(score_norms).mean().item()}
