"""Guidance delay (Jain et al., "Classifier-Free Guidance inside the Attraction Basin May Cause Memorization", CVPR
2025; code: SonyResearch/mitigating_memorization). Memorized generations are pulled into their basin early; no text
guidance until a transition, then the usual classifier-free guidance.

- static (generate_test_dataset_stp.py, the README's setting): guidance weight 0 (the unconditional output alone)
  while the timestep is above t = 500 of 1,000, the sampler's guidance from there on;
- dynamic (generate_test_dataset_dtp.py): the conditional output alone (weight 1) until the norm of the guidance
  direction ||c - u|| (over the whole sample) has passed a strict local minimum, i.e. from the first step whose
  previous step's norm was below both its neighbours; the sampler's guidance from that step on, for that sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError

MODES = ("static", "dynamic")


def timestep_fraction(adapter, t: torch.Tensor) -> float:
    """Where a sampler step lies on the model's 0..1 noise axis (timestep / training timesteps; flow models' model
    timesteps run 0..1000)."""
    return float(t.flatten()[0]) / float(getattr(adapter, "num_train_timesteps", None) or 1000)


@dataclass
class GuidanceDelay(Mitigation):
    name: ClassVar[str] = "guidance-delay"
    source: ClassVar[str] = ("Jain et al., CVPR 2025; SonyResearch/mitigating_memorization, "
                             "generate_test_dataset_stp.py (static, t = 500) and generate_test_dataset_dtp.py "
                             "(dynamic)")
    needs_cfg: ClassVar[bool] = True

    mode: str = "static"
    t: float = 500.0  # static: the transition timestep, of 1,000 training timesteps
    before: float | None = None  # the guidance weight before the transition (None: static 0, dynamic 1, as coded)

    def __post_init__(self):
        if self.mode not in MODES:
            raise MitigationError(f"guidance-delay mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 0 < float(self.t) <= 1000:
            raise MitigationError(f"guidance-delay t={self.t}: a timestep in (0, 1000]")

    def weight_before(self) -> float:
        if self.before is not None:
            return float(self.before)
        return 0.0 if self.mode == "static" else 1.0

    def guide(self, call: GenerationCall, x, t, cond, guidance, plain):
        if cond is None:
            return None
        n = len(x)
        if self.mode == "static":
            if timestep_fraction(call.adapter, t) * 1000.0 > float(self.t):
                return plain(x, t, cond, [self.weight_before()] * n)
            return None
        u, c = call.pair(x, t, cond)
        state = call.state.setdefault(self.name, {"norms": [], "on": torch.zeros(n, dtype=torch.bool)})
        norms = state["norms"]
        norms.append((c - u).float().flatten(1).norm(dim=1).cpu())
        if len(norms) >= 3:
            state["on"] |= (norms[-2] < norms[-3]) & (norms[-2] < norms[-1])
        per_row = isinstance(guidance, (list, tuple)) or torch.is_tensor(guidance)
        scales = torch.tensor([float(v) for v in guidance] if per_row else [float(guidance)] * n)
        w = torch.where(state["on"], scales, torch.full_like(scales, self.weight_before()))
        w = w.to(c.device, c.dtype).view(-1, *([1] * (c.ndim - 1)))
        return u + w * (c - u)
