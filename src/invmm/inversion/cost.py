"""Model calls per image: a cost measure that does not depend on the machine.

Counts are rows through a model (one image of a batch through one network evaluation):
- `opt_forward`, `opt_backward`: the denoiser in the optimisation (every forward there is backpropagated);
- `check_forward`: the denoiser in the success checks (each sampler step of each sample, twice for a
  sample at a guidance scale other than 1: conditional and unconditional pass);
- `map_forward`: the same for the memorization map's samples, once per inversion at its last check (check.py);
- `stop_forward`: the same for early stopping's centre samples, one per failed check (early_stop.py);
- `vae_encode`, `vae_decode`: the autoencoder of latent models (the target once, each check or map sample once);
- `text_encoder`: prompts through the text encoder(s) (soft prompts every step, check prompts, captions);
- `similarity`: check samples compared with the target.
A backward costs about two forwards (records.forward_equivalents weighs them; records.sum_calls adds them up).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch


def sample_forwards(sampler_steps: int, conditional: bool, scale: float, guidance_kind: str = "cfg") -> int:
    """Denoiser forwards to generate one check sample: one per sampler step, two at a guidance scale other
    than 1 (conditional and unconditional pass)."""
    # A guidance-distilled model ("embedded", Flux dev) takes the scale as an input: one pass at any scale.
    return sampler_steps * (2 if conditional and scale != 1.0 and guidance_kind == "cfg" else 1)


def _rows(args, kwargs) -> int:
    for v in (*args, *kwargs.values()):
        if torch.is_tensor(v) and v.ndim > 0:
            return int(v.shape[0])
    return 0


class RowCounter:
    """Rows through some modules, counted by forward pre-hooks while `attached`."""

    def __init__(self, modules):
        self.modules = [m for m in modules if m is not None]
        self.rows = 0

    def _hook(self, module, args, kwargs):
        self.rows += _rows(args, kwargs)

    @contextlib.contextmanager
    def attached(self):
        handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def text_encoders(adapter) -> list:
    return [e for e in adapter.text_encoders if e is not None]


def vae_encoder(adapter):
    return adapter.vae.encoder if adapter.vae is not None else None


class Meter:
    """The text-encoder and VAE-encoder rows of per-image calls (a prompt encoded, a target encoded), counted by
    hooks on the model's modules while `attached`; the denoiser's rows are counted from what each image puts into
    a batch instead (the inversion's own bookkeeping)."""

    def __init__(self, adapter):
        self._text = RowCounter(text_encoders(adapter))
        self._encoder = RowCounter([vae_encoder(adapter)])

    @contextlib.contextmanager
    def attached(self):
        with self._text.attached(), self._encoder.attached():
            yield self

    @contextlib.contextmanager
    def metered(self, calls: Counter):
        """Adds the rows of the enclosed calls to `calls` (one image's)."""
        text, enc = self._text.rows, self._encoder.rows
        yield
        calls["text_encoder"] += self._text.rows - text
        calls["vae_encode"] += self._encoder.rows - enc
