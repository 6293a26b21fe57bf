"""Attention re-scaling (Ren et al., "Unveiling and Mitigating Memorization in Text-to-image Diffusion Models through
Cross Attention", ECCV 2024; code: renjie3/MemAttn, refactored_attention_processor.py): memorized prompts concentrate
cross-attention on a few prompt tokens; in every cross-attention layer, at every step, the logits of the text
positions after the first end token are masked (both halves of the guidance batch), and the start token's logit is
multiplied by C on the conditional rows, through a diffusers attention processor installed for the generation. C =
1.25 as the authors' script runs it.

The authors tell the conditional rows by their place in the batch (every second row), which holds for one image per
prompt only; here a row is conditional unless it is the unconditional embedding, and its end token is found from its
caption (an inverted prompt fills every position but the last).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError, row_digest, sequence


def cross_attention_layers(denoiser) -> list:
    from diffusers.models.attention_processor import Attention

    return [m for m in denoiser.modules() if isinstance(m, Attention) and m.is_cross_attention]


def end_position(tokenizer, text: str, length: int) -> int:
    """The position of the first end token of `text` as the model's tokenizer pads it to `length`."""
    ids = tokenizer(text, truncation=True, max_length=length).input_ids
    return min(len(ids) - 1, length - 1)


class RescaledCrossAttention:
    """A cross-attention processor computing the attention as diffusers' own AttnProcessor does, with the logits
    masked after each row's end token and the start token's logit times `c` on the conditional rows."""

    def __init__(self, rows, c: float, mask: bool):
        self.rows, self.c, self.mask = rows, float(c), mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four = hidden_states.ndim == 4
        if four:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)
        batch, keys = encoder_hidden_states.shape[:2]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        logits = attn.scale * query @ key.transpose(-1, -2)  # [batch x heads, queries, keys]
        if attention_mask is not None:
            logits = logits + attn.prepare_attention_mask(attention_mask, keys, batch)
        logits = logits.view(batch, -1, *logits.shape[1:])
        conditional, ends = self.rows(encoder_hidden_states)
        if self.mask:
            after = torch.arange(keys, device=logits.device)[None, :] > ends.to(logits.device)[:, None]
            logits = logits.masked_fill(after[:, None, None, :], float("-inf"))
        if self.c != 1.0 and bool(conditional.any()):
            factor = torch.ones(batch, device=logits.device, dtype=logits.dtype)
            factor[conditional.to(logits.device)] = self.c
            logits = torch.cat([logits[..., :1] * factor.view(-1, 1, 1, 1), logits[..., 1:]], dim=-1)
        probs = logits.softmax(dim=-1).to(value.dtype).view(-1, *logits.shape[2:])
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, ch, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class AttentionScale(Mitigation):
    name: ClassVar[str] = "attention-scale"
    source: ClassVar[str] = ("Ren et al., ECCV 2024; renjie3/MemAttn, refactored_attention_processor.py (C = 1.25 "
                             "in the authors' script)")

    c: float = 1.25
    mask: bool = True

    def __post_init__(self):
        if float(self.c) <= 0:
            raise MitigationError(f"attention-scale c={self.c}: must be > 0")

    def refuse(self, adapter) -> str | None:
        why = super().refuse(adapter)
        if why is None and adapter.denoiser is not None and not cross_attention_layers(adapter.denoiser):
            why = (f"it rescales cross-attention between the image and the prompt tokens, and the {adapter.family} "
                   f"model's {type(adapter.denoiser).__name__} has no cross-attention layer (joint attention)")
        return why

    def attention(self, call: GenerationCall):
        adapter = call.adapter
        tokenizer = adapter.tokenizers[0]
        seq = sequence(call.cond)
        length = seq.shape[1]
        known = {}  # row digest -> (conditional, end position)
        for i, row in enumerate(seq):
            text = call.texts[i] if i < len(call.texts) else None
            known[row_digest(row)] = (True, length - 1 if text is None else end_position(tokenizer, text, length))
        uncond = sequence(adapter.unconditional_rows(call.cond, len(call.noise)))
        empty_end = end_position(tokenizer, "", length)
        for row in uncond:
            known[row_digest(row)] = (False, empty_end)
        cache = {}

        def rows(states: torch.Tensor):
            key = (states.data_ptr(), tuple(states.shape), float(states.float().sum()))
            if key not in cache:  # one tensor per step feeds every layer: looked up once
                found = [known.get(row_digest(r), (True, length - 1)) for r in states]
                cache.clear()
                cache[key] = (torch.tensor([f[0] for f in found]), torch.tensor([f[1] for f in found]))
            return cache[key]

        return _installed(cross_attention_layers(adapter.denoiser), RescaledCrossAttention(rows, self.c, self.mask))


@contextlib.contextmanager
def _installed(layers, processor):
    before = [m.processor for m in layers]
    try:
        for m in layers:
            m.processor = processor
        yield
    finally:
        for m, p in zip(layers, before):
            m.processor = p
