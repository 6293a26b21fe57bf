"""Embedding noise (Somepalli et al., "Understanding and Mitigating Copying in Diffusion Models", NeurIPS 2023;
code: somepago/DCR, sd_mitigation.py): Gaussian noise scaled by lambda on the text encoder's output, at every
position, on the conditional and the unconditional embeddings alike (the authors' encoder returns both), drawn once
per generation; lambda = 0.1 as the repository's README runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError, sequence, with_sequence


@dataclass
class EmbeddingNoise(Mitigation):
    name: ClassVar[str] = "embedding-noise"
    source: ClassVar[str] = "Somepalli et al., NeurIPS 2023; somepago/DCR, sd_mitigation.py (lambda 0.1, README)"

    scale: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if float(self.scale) < 0:
            raise MitigationError(f"embedding-noise scale={self.scale}: must be >= 0")

    def _noised(self, call: GenerationCall, cond, stream: str):
        seq = sequence(cond)
        draws = torch.stack([torch.randn(seq.shape[1:], generator=call.generator(self.seed, stream, i))
                             for i in range(len(seq))])
        return with_sequence(cond, seq + float(self.scale) * draws.to(seq.device, seq.dtype))

    def prepare(self, call: GenerationCall) -> None:
        call.cond = self._noised(call, call.cond, self.name)
        uncond = call.adapter.unconditional_rows(call.cond, len(call.noise))
        call.uncond = self._noised(call, uncond, self.name + "/uncond")
