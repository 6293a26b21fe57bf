"""The memorization map of an image at its last check (a success, or the end of the budget): which pixels the fitted
noise reproduces beyond what any noise does (functional.memorization_map). An image whose budget ends between checks
(a budget off the check grid, a skipped last check) gets its map at its final distribution (SuccessCheck.last_maps).

The fitted side is the decided check's samples, topped up to m = config.map_samples (8 by default, at most the
check's n; 0: no map) from the check's own noises and conditionings (a failing check may have stopped after its
first round); the prior side is m samples from N(0, I) with the first m of those conditionings, at the same
guidance scale. The prior noise (and, with eta > 0, the sampler noise) comes from the image's own "map" stream, so
no other draw, decision or score changes.
"""

from __future__ import annotations

import torch

from invmm.families.conditions import cond_cat, cond_rows
from invmm.functional import map_window, memorization_map, reproduction_map, seed_from


def map_noise(check, c, have: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's map noises when its decided samples are its first `have`: the check's own noises up to m (the
    top-up) and m prior noises from the image's "map" stream."""
    cfg = check.inv.config
    m = min(cfg.map_samples, cfg.n_check_samples)  # the check has drawn n_check_samples noises and prompts
    gen = torch.Generator().manual_seed(seed_from(c.state.image_seed, "map"))
    prior = torch.randn((m, *c.state.x0.shape), generator=gen, device=gen.device).to(c.state.x0.device)
    return c.noise[have:m], prior


def make_maps(check, checks: list, scales, conditional: bool) -> None:
    """Each image's memorization map (state.map) at its last check: the rows its decided scale still lacks and m
    prior rows, all at the decided scale, in one sampler call after the check is decided (so the check's own
    samples are those of a run without the map, bit for bit). `check`: the SuccessCheck (its inverter and
    counts)."""
    inv, cfg = check.inv, check.inv.config
    noises, conds, rows, made = [], [], [], {}  # made: image -> (decided samples, top-up rows, prior rows)
    for c in checks:
        s, k = c.state, c.decided
        have = sum(len(b) for b in c.samples.get(k, []))
        top, prior = map_noise(check, c, have)
        made[id(c)] = (have, len(top), len(prior))
        noises += [top, prior]
        if conditional:
            conds += [cond_rows(c.cond, slice(have, have + len(top))), cond_rows(c.cond, slice(0, len(prior)))]
        gen = torch.Generator().manual_seed(seed_from(s.image_seed, "map-sampler"))
        rows += [(k, gen)] * (len(top) + len(prior))
        check.count(s, len(top) + len(prior), inv.check_steps, conditional, scales[k], kind="map_forward")
    with inv.autocast():
        images = inv.adapter.generate(
            torch.cat(noises), steps=cfg.sampler_steps, eta=cfg.eta, cond=cond_cat(conds) if conditional else None,
            guidance=[scales[k] for k, _ in rows] if conditional else 1.0,
            generator=[g for _, g in rows] if cfg.eta > 0 else None, schedule=cfg.check_schedule)
    images = images.float().cpu()
    offset = 0
    for c in checks:
        s, k, (have, n_top, m) = c.state, c.decided, made[id(c)]
        top_images, prior_images = images[offset : offset + n_top], images[offset + n_top : offset + n_top + m]
        offset += n_top + m
        decided = torch.cat(c.samples[k]) if c.samples.get(k) else top_images[:0]
        fitted = torch.cat([decided, top_images])[: max(m, have)]
        target = s.target.pixels.float().cpu()
        window = map_window(target.shape[-1])
        s.map = memorization_map(reproduction_map(fitted, target, window=window),
                                 reproduction_map(prior_images, target, window=window))
