"""Norm + angle detection of memorized prompts (Asthana & Belagiannis, "Detecting and Mitigating Memorization
in Diffusion Models through Anisotropy of the Log-Probability", ICLR 2026).

From pure noise x ~ N(0, I) and no denoising step, two conditional/unconditional forward passes:

    norm   = ||eps(x, t_norm, c) - eps(x, t_norm, empty)||                 (Wen et al.'s magnitude, high noise)
    cosine = cos(eps(x, t_angle, empty), eps(x, t_angle, c) - eps(x, t_angle, empty))   (low-noise timestep)
    score  = norm_weight * norm + angle_weight * cosine, averaged over the noise draws.

The cosine is the angle between the unconditional score and the guidance vector (both scores are -eps/sigma,
so the sign and scale cancel): under a memorized prompt the low-noise log-density is anisotropic and the
guidance points along the unconditional score. As in the authors' code the cosine is taken over the channels
at each spatial position and averaged over positions ("channels"); "all" takes one cosine of the flattened
vectors (for a 1-channel pixel model the per-position cosine is only the sign agreement).

Both are taken on the model's raw outputs, as the authors take them: eps for an epsilon model, v for a
v-prediction model (SD 2), whose cosine is then that of the v's, not of the eps converted from them. The
norm is of the eps difference, which for v is sqrt(abar) times the v difference; the authors' SD 2 path
divides it by 1 - abar_t (their "score" difference), a factor of 1.005 at SD 2's t_norm 981, kept here.

t_norm is the first timestep of the model's `sampler_steps`-step DDIM grid (981 on Stable Diffusion's 50-step
grid), t_angle the third from last (41 there). Text-to-image DDPM-family models. Higher = memorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from invmm.families.conditions import cond_cat, cond_expand
from invmm.scorers.base import PromptScorer, ScorerError

COSINE_OVER = ("channels", "all")


@dataclass
class AnisotropyScorer(PromptScorer):
    n_generations: int = 1
    sampler_steps: int = 50
    t_norm: int | None = None  # None: the grid's first timestep
    t_angle: int | None = None  # None: the grid's third timestep from the end
    norm_weight: float = 1.0  # the authors' gamma_1 and gamma_2 for SD 1.4 (SD 2: 1.0 and 0.1)
    angle_weight: float = 2.0
    cosine_over: str = "channels"

    name = "anisotropy"
    follows_mitigations = False  # its own sampler loop (Scorer.follows_mitigations)
    higher_is_better = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cosine_over not in COSINE_OVER:
            raise ScorerError(f"scorer 'anisotropy': cosine_over={self.cosine_over!r}; expected one of {COSINE_OVER}")
        self.norm_weight, self.angle_weight = float(self.norm_weight), float(self.angle_weight)
        grid = sampler_grid(self, minimum=3)
        # Resolved here so that the run's settings record the timesteps actually used.
        self.t_norm = grid[0] if self.t_norm is None else self.t_norm
        self.t_angle = grid[-3] if self.t_angle is None else self.t_angle
        n = self.adapter.num_train_timesteps
        for key in ("t_norm", "t_angle"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
                raise ScorerError(f"scorer 'anisotropy': {key}={value!r} must be a whole timestep in the model's "
                                  f"0..{n - 1}")

    def _score_caption(self, adapter, cond, noise):
        n = len(noise)
        c, u = cond_expand(cond, n), adapter.uncond_embeddings(n)
        t = torch.tensor([self.t_norm] * 2 * n + [self.t_angle] * 2 * n, device=adapter.device)
        with torch.no_grad():
            # One call: [uncond, cond] at t_norm, then at t_angle, all on the same pure noise; the raw outputs.
            out = adapter.guided_output(torch.cat([noise] * 4), t, cond_cat([u, c, u, c]))
        u_norm, c_norm, u_angle, c_angle = out.chunk(4)
        norm = (c_norm - u_norm).flatten(1).norm(dim=1) * self._norm_scale(adapter)
        guidance = c_angle - u_angle
        if self.cosine_over == "channels":
            cosine = F.cosine_similarity(u_angle, guidance, dim=1).flatten(1).mean(1)
        else:
            cosine = F.cosine_similarity(u_angle.flatten(1), guidance.flatten(1), dim=1)
        norm, cosine = norm.mean().item(), cosine.mean().item()
        return self.norm_weight * norm + self.angle_weight * cosine, {"norm": norm, "cosine": cosine}


    def _norm_scale(self, adapter) -> float:
        """The factor from the raw output difference to the norm the authors take (see the module's doc)."""
        abar = float(adapter.alpha_bar(torch.tensor(self.t_norm, device=adapter.device)))
        return {"epsilon": 1.0, "v_prediction": abar ** 0.5 / (1 - abar),
                "sample": (abar / (1 - abar)) ** 0.5}[adapter.prediction_type]


def sampler_grid(scorer, *, minimum: int = 1) -> list[int]:
    """The timesteps of the model's own `sampler_steps`-step DDIM grid (the authors' DDIMScheduler from the
    pipeline's config), refused at construction when the step count does not fit the model."""
    steps, n = scorer.sampler_steps, scorer.adapter.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not minimum <= steps <= n:
        raise ScorerError(f"scorer {scorer.name!r}: sampler_steps={steps!r} must be a whole number in "
                          f"{minimum}..{n} (the model has {n} training timesteps)")
    return [int(t) for t in scorer.adapter.sampler(steps).timesteps]
