"""What every inference-time mitigation shares: its settings, where it applies, and the generation call it acts on.

A mitigation changes how the model generates, never its weights: the success check, the refinement's samples, the
memorization map, the early stop's examination and generate_compare all generate through `adapter.generate`, and
install() (mitigations/__init__.py) puts the mitigations there. Each acts through up to three hooks of one
generation call: `prepare` (the conditioning before sampling), `guide` (the guided output of each sampler step) and
`attention` (attention processors for the call).

Random draws (embedding noise, inserted tokens) come per sample from a stream keyed on the mitigation's own seed (a
setting, 0 unless given) and that sample's own starting noise, so a sample is mitigated the same way whatever else
shares its batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from invmm.families.base import TEXT
from invmm.functional import seed_from


class MitigationError(ValueError):
    """A mitigation that cannot apply to this model or these settings (said before anything runs)."""


def row_digest(row: torch.Tensor) -> str:
    return hashlib.sha1(row.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def sequence(cond):
    """The token-sequence embeddings of a conditioning (a tensor, or the first tensor of a tuple)."""
    return cond[0] if isinstance(cond, tuple) else cond


def with_sequence(cond, seq: torch.Tensor):
    return (seq, *cond[1:]) if isinstance(cond, tuple) else seq


@dataclass
class GenerationCall:
    """One call of adapter.generate under mitigations: its starting noise, conditioning and guidance, and what the
    mitigations need to know of it."""

    adapter: object
    noise: torch.Tensor
    cond: object
    guidance: float | list[float]
    steps: int
    schedule: str
    plain: object = None  # the model's own guided output (adapter.guided_output as the family defines it)
    pair: object = None  # the model's own (u, c) of a guided step (adapter.guidance_pair)
    texts: list[str | None] = field(default_factory=list)  # each row's known caption (None: an inverted prompt)
    uncond: object | None = None  # the unconditional rows (adapter.unconditional_rows), where a mitigation changes them
    state: dict = field(default_factory=dict)  # per-mitigation state across the call's steps

    def __post_init__(self):
        self.keys = [row_digest(r) for r in self.noise]

    def generator(self, seed: int, name: str, i: int) -> torch.Generator:
        """Row i's stream for the mitigation `name` at its `seed`."""
        return torch.Generator().manual_seed(seed_from(seed, "mitigation", name, self.keys[i]))


@dataclass
class Mitigation:
    """Subclasses are dataclasses of their settings with `name`, `source` (the paper, and the authors' code it
    follows) and the hooks they use."""

    name: ClassVar[str] = "mitigation"
    source: ClassVar[str] = ""
    needs_cfg: ClassVar[bool] = False  # acts on classifier-free guidance (u and c outputs)

    def refuse(self, adapter) -> str | None:
        """Why this mitigation has no meaning on this model (None: it applies)."""
        if TEXT not in adapter.capabilities:
            what = "a class-conditional" if adapter.conditional else "an unconditional"
            return (f"it changes how a text prompt conditions generation, and the {adapter.family} model is "
                    f"{what} model")
        if self.needs_cfg and getattr(adapter, "guidance_kind", "cfg") != "cfg":
            return (f"it acts on classifier-free guidance (an unconditional and a conditional output), and the "
                    f"{adapter.family} model takes guidance {adapter.guidance_kind!r}")
        return None

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> dict:
        return {"name": self.name, **self.settings()}

    def spec(self) -> str:
        s = self.settings()
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in s.items()) if s else "")

    # --- hooks ---
    def prepare(self, call: GenerationCall) -> None:
        """Before sampling: may change call.cond (and call.uncond)."""

    def guide(self, call: GenerationCall, x: torch.Tensor, t: torch.Tensor, cond, guidance, plain):
        """A sampler step's output, or None to leave it to the next mitigation (`plain(x, t, cond, guidance)` is the
        model's own guided output)."""
        return None

    def attention(self, call: GenerationCall):
        return contextlib.nullcontext()
