"""Prompt-embedding adjustment (Wen et al., "Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024; code: YuxinWenRick/diffusion_memorization, local_sd_pipeline.py): memorized prompts make the text-
conditional noise prediction stand out, so before sampling the prompt's embedding (every position but the start
token's) is moved by AdamW (lr 0.05, at most 10 steps) to bring ||eps(x_T, c) - eps(x_T, empty)||, at the sampler's
first timestep on the starting noise, down to a target; sampling then starts from the same noise.

The authors' stopping rule reads one norm over the whole batch of 4 images of 4 x 64 x 64 latents (target 3); here
each sample stops on its own, at the same size per dimension: an RMS of 3 / sqrt(4 x 4 x 64 x 64) = 0.0117, so that
a sample's result does not depend on the batch it shares nor on the model's latent size (a listed deviation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError, sequence, with_sequence

AUTHORS_TARGET_RMS = 3.0 / math.sqrt(4 * 4 * 64 * 64)


@dataclass
class PromptAdjust(Mitigation):
    name: ClassVar[str] = "prompt-adjust"
    source: ClassVar[str] = ("Wen et al., ICLR 2024; YuxinWenRick/diffusion_memorization, local_sd_pipeline.py "
                             "(AdamW lr 0.05, 10 steps, target 3 over 4 images)")
    needs_cfg: ClassVar[bool] = True

    lr: float = 0.05
    steps: int = 10
    target: float = AUTHORS_TARGET_RMS  # per-dimension RMS of eps(x_T, c) - eps(x_T, empty) at which a sample stops

    def __post_init__(self):
        if float(self.lr) <= 0 or int(self.steps) < 0 or float(self.target) < 0:
            raise MitigationError(f"prompt-adjust lr={self.lr}, steps={self.steps}, target={self.target}: lr must "
                                  "be > 0, steps and target >= 0")

    def prepare(self, call: GenerationCall) -> None:
        adapter = call.adapter
        t0 = adapter.sampler(call.steps, call.schedule).timesteps[0]
        x = call.noise.to(adapter.device, torch.float32)
        t = t0.expand(len(x)).to(adapter.device)
        seq = sequence(call.cond).detach()
        with torch.no_grad():
            u, _ = call.pair(x, t, call.cond)
        start = seq[:, :1]
        free = seq[:, 1:].clone().requires_grad_(True)  # the start token's embedding stays (its gradient is zeroed)
        opt = torch.optim.AdamW([free], lr=float(self.lr))
        stopped = torch.zeros(len(x), dtype=torch.bool, device=seq.device)
        rms = None
        with torch.enable_grad():
            for _ in range(int(self.steps)):
                c = call.plain(x, t, with_sequence(call.cond, torch.cat([start, free], 1)), 1.0)
                d = (c - u).float().flatten(1)
                rms = d.norm(dim=1) / math.sqrt(d.shape[1])
                stopped |= (rms <= float(self.target)).to(stopped.device)
                if bool(stopped.all()):
                    break
                kept = free.detach().clone()
                opt.zero_grad()
                (d.norm(dim=1) * (~stopped).to(d.dtype)).sum().backward()
                opt.step()
                with torch.no_grad():  # a sample that reached the target keeps its embedding
                    free[stopped] = kept[stopped]
        call.cond = with_sequence(call.cond, torch.cat([start, free.detach()], 1).to(seq.dtype))
        call.state[self.name] = {"rms": None if rms is None else rms.detach().cpu().tolist(),
                                 "stopped": stopped.cpu().tolist()}
