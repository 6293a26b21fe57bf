"""Conditionings as batches: a conditioning is a tensor or a tuple of tensors (SDXL, PixArt, SD3, Flux), batch
first; these take rows of it, join and repeat it, whatever its form, and guide a model with it."""

from __future__ import annotations

import torch


def cond_cat(conds: list):
    """Concatenate conditionings along the batch; a conditioning is a tensor or a tuple of tensors."""
    if isinstance(conds[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*conds))
    return torch.cat(conds)


def cond_expand(cond, n: int):
    if isinstance(cond, tuple):
        return tuple(c.expand(n, *c.shape[1:]) for c in cond)
    return cond.expand(n, *cond.shape[1:])


def cond_rows(cond, idx: torch.Tensor):
    """The rows `idx` of a conditioning (a tensor or a tuple of tensors)."""
    if isinstance(cond, tuple):
        return tuple(c[idx] for c in cond)
    return cond[idx]


def guidance_pair(model_fn, x: torch.Tensor, t: torch.Tensor, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional and the conditional outputs a guided step combines, in one batched call [uncond; cond]."""
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), cond_cat([uncond, cond]))
    u, c = out.chunk(2)
    return u, c


def classifier_free_guidance(model_fn, x: torch.Tensor, t: torch.Tensor, cond, uncond, scale):
    """u + scale (c - u), with `scale` one number or one scale per row.

    A single plain call at scale 1 or without a prompt (model_fn(x, t, None) is the model's own unconditional
    output). Otherwise one batched call: [uncond; cond] for a number; for per-row scales, the unconditional
    pass runs only for the rows whose scale is not 1, so rows checked at scale 1 cost one forward.
    """
    if cond is None:
        return model_fn(x, t, None)
    if not torch.is_tensor(scale) and not isinstance(scale, (list, tuple)):
        if scale == 1.0:
            return model_fn(x, t, cond)
        u, c = guidance_pair(model_fn, x, t, cond, uncond)
        return u + scale * (c - u)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    guided = (scale != 1.0).nonzero().squeeze(1)
    if len(guided) == 0:
        return model_fn(x, t, cond)
    k = len(guided)
    out = model_fn(torch.cat([x[guided], x]), torch.cat([t[guided], t]), cond_cat([cond_rows(uncond, guided), cond]))
    u, c = out[:k], out[k:]
    s = scale[guided].reshape(-1, *([1] * (x.ndim - 1))).to(c.dtype)
    return c.index_copy(0, guided, u + s * (c[guided] - u))
