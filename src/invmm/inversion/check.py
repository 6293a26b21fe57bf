"""The success check: generate n samples from each image's N(mu, sigma^2) and test them all for being copies.

Conditional models try the guidance scales in order; an image succeeds at the first scale where all n samples
are copies. The samples come in rounds (config.check_rounds: the first 1, then up to 4, then all 8): an (image,
scale) whose round has a non-copy stops there and the image moves to its next scale. Each sample depends only
on its own noise and prompt draw, so the decision is the full check's, while a failing check, the common case,
costs a fraction of the forwards. The first round runs at every scale, and each later round at the image's lowest
scale still possible; all images' rows go into one batched sampler call, each row at its own scale.

With a mask (partial memorization) the similarity compares the masked region only. When an image's check is its
last (a success, or the end of the budget), its memorization map is made (memorization_map.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from invmm.families.conditions import cond_cat, cond_rows
from invmm.functional import kl_to_standard_normal, reparameterize, seed_from
from invmm.inversion.cost import sample_forwards
from invmm.inversion.memorization_map import make_maps
from invmm.inversion.state import ImageState
from invmm.records import CheckRecord


@dataclass
class ImageCheck:
    """One image's check in progress."""

    state: ImageState
    noise: torch.Tensor  # [n, ...] the starting noises, drawn once and used at every guidance scale
    cond: object | None  # their conditionings
    candidates: list[int]  # the scales (indices) still able to pass, lowest first
    done: dict[int, int] = field(default_factory=dict)  # scale -> samples generated, all copies so far
    sims: dict[int, list[float]] = field(default_factory=dict)  # scale -> the similarities of its samples
    samples: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    passed: int | None = None  # the scale at which every sample was a copy
    decided: int | None = None  # the scale whose samples the record keeps

    def record(self, k: int, values: list[float], batch: torch.Tensor, hi: int, beta: float) -> None:
        """A round's samples at scale k: the scale stays possible only if all of them are copies."""
        self.sims.setdefault(k, []).extend(values)
        self.samples.setdefault(k, []).append(batch)
        if min(values) < beta:
            self.candidates.remove(k)
        else:
            self.done[k] = hi

    def closest(self) -> int:
        """For a failed check, the scale whose worst sample came closest (the first such scale on a tie)."""
        return max(self.sims, key=lambda k: (min(self.sims[k]), -k))


class SuccessCheck:
    def __init__(self, inverter):
        self.inv = inverter  # the adapter, config, similarity, meter, autocast and cost settings

    @torch.no_grad()
    def draws(self, s: ImageState, *, encode: bool = True):
        """A check's draws from the image's streams: its n starting noises from N(mu, sigma^2) and, for a
        conditional model, its prompts (encoded only when `encode`: a skipped check takes the same draws)."""
        n = self.inv.config.n_check_samples
        z = torch.randn((n, *s.x0.shape), generator=s.gen, device=s.gen.device).to(s.x0.device)
        cond = None
        if s.cond is not None:
            with self.inv.meter.metered(s.calls):
                cond = s.cond.for_check(n) if encode else s.cond.skip_check(n)
        return reparameterize(s.mu[None], s.logvar[None], z), cond

    @torch.no_grad()
    def __call__(self, checking: list[ImageState]) -> list[tuple[ImageState, bool, str | None]]:
        """Check every image due; returns those that finish: (state, success, error) for a success, or for a
        failure at the end of the budget."""
        cfg = self.inv.config
        n = cfg.n_check_samples
        conditional = checking[0].cond is not None
        scales = list(cfg.guidance_scales) if conditional else [1.0]
        # eta > 0: an image's samples share one sampler stream, so they are drawn together, all n at once.
        bounds = ([b for b in sorted(set(cfg.check_rounds)) if 0 < b < n] if cfg.eta == 0 else []) + [n]
        checks = [ImageCheck(s, *self.draws(s), candidates=list(range(len(scales)))) for s in checking]
        previews = self._preview(checks, scales) if cfg.check_preview_steps else {}
        # With rounds, the first round runs at every scale at once: a failing check (most are) is then one sampler
        # call, not one per scale. Later rounds follow the lowest scale still possible.
        first = len(bounds) > 1
        open_ = [c for c in checks if c.candidates]
        while open_:
            if first:
                parts = [(c, k, 0, bounds[0]) for c in open_ for k in c.candidates]
                first = False
            else:
                parts = [(c, c.candidates[0], c.done.get(c.candidates[0], 0),
                          next(b for b in bounds if b > c.done.get(c.candidates[0], 0))) for c in open_]
            self._round(parts, scales, conditional)
            for c in open_:
                if c.candidates and c.done.get(c.candidates[0], 0) == n:
                    c.passed = c.candidates[0]  # every lower scale has failed: the first scale that passes
            open_ = [c for c in open_ if c.candidates and c.passed is None]
        finished = []
        for c in checks:
            self._decide(c, scales, conditional, previews)
            if c.passed is not None or c.state.step >= cfg.max_steps:
                finished.append((c.state, c.passed is not None, None))
        last = [c for c in checks if c.passed is not None or c.state.step >= cfg.max_steps]
        if last and cfg.map_samples:
            make_maps(self, last, scales, conditional)
        return finished

    @torch.no_grad()
    def last_maps(self, states: list[ImageState]) -> None:
        """The memorization map of images whose budget ends with no check at its last step: the final
        distribution's samples (at the lowest guidance scale) against the prior's, drawn from each image's own
        "map-last" stream, so nothing the paper's rule sees changes."""
        inv, cfg = self.inv, self.inv.config
        conditional = states[0].cond is not None
        scales = list(cfg.guidance_scales) if conditional else [1.0]
        checks = []
        for s in states:
            seed = seed_from(s.image_seed, "map-last")
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn((cfg.n_check_samples, *s.x0.shape), generator=gen, device=gen.device).to(s.x0.device)
            cond = None
            if conditional:
                g = torch.Generator(device=inv.adapter.device).manual_seed(seed_from(seed, "prompt"))
                with inv.meter.metered(s.calls):
                    cond = s.cond.check_at(cfg.n_check_samples, s.cond.snapshot(), g)
            c = ImageCheck(s, reparameterize(s.mu[None], s.logvar[None], z), cond, candidates=[])
            c.decided = 0
            checks.append(c)
        make_maps(self, checks, scales, conditional)

    def _round(self, parts, scales, conditional) -> None:
        """One sampler call over every (image, scale, first sample, last sample) part; each part's samples judged."""
        inv, cfg = self.inv, self.inv.config
        rows = [(c, k) for c, k, lo, hi in parts for _ in range(lo, hi)]
        with inv.autocast():
            cond = cond_cat([cond_rows(c.cond, slice(lo, hi)) for c, _, lo, hi in parts]) if conditional else None
            # Stochastic sampling draws each image's noise from its own generator (see generate).
            gens = [c.state.sampler_gen for c, _ in rows] if cfg.eta > 0 else None
            images = inv.adapter.generate(torch.cat([c.noise[lo:hi] for c, _, lo, hi in parts]),
                                          steps=cfg.sampler_steps, eta=cfg.eta, cond=cond,
                                          guidance=[scales[k] for _, k in rows] if conditional else 1.0,
                                          generator=gens, schedule=cfg.check_schedule)
        images = images.float()
        offset = 0
        for c, k, lo, hi in parts:
            batch = images[offset : offset + hi - lo].cpu()
            offset += hi - lo
            values = self.judge(batch, c.state)
            self.count(c.state, hi - lo, inv.check_steps, conditional, scales[k])
            c.record(k, values, batch, hi, cfg.beta)

    def similarity(self, batch: torch.Tensor, s: ImageState) -> torch.Tensor:
        """The samples' similarities to the image's target, over its mask where it has one."""
        if s.target.mask is None:
            return self.inv.similarity(batch, s.target.pixels)
        return self.inv.similarity(batch, s.target.pixels, mask=s.target.mask)

    def judge(self, batch: torch.Tensor, s: ImageState) -> list[float]:
        """The samples' similarities as every verdict reads them (rounded to 6 digits; a copy is >= beta): the
        check, its preview and the refinement's estimates all judge a sample through this one function."""
        return [round(float(v), 6) for v in self.similarity(batch, s)]

    def count(self, s: ImageState, m: int, steps: int, conditional: bool, scale: float,
              kind: str = "check_forward") -> None:
        s.calls[kind] += m * sample_forwards(steps, conditional, scale, self.inv.guidance_kind)
        s.calls["vae_decode"] += m if self.inv.decodes else 0
        s.calls["similarity"] += m if kind == "check_forward" else 0

    def _decide(self, c: ImageCheck, scales, conditional, previews) -> None:
        """The check's record on the image: the passing scale's samples, or the closest failing one's."""
        s = c.state
        if c.passed is None and not c.sims:  # every scale dropped by the preview: its samples stand
            s.check_skips["preview"] += 1
            for k, (values, batch) in previews.get(id(c), {}).items():
                c.sims[k], c.samples[k] = values, [batch]
        k = c.decided = c.passed if c.passed is not None else c.closest()
        s.check_scale = scales[k]  # the scale whose samples the record keeps (early_stop.py examines there)
        s.similarities, s.samples = c.sims[k], torch.cat(c.samples[k])
        kl = float(kl_to_standard_normal(s.mu[None], s.logvar[None])[0])
        s.checks.append(CheckRecord(s.step, kl, s.lam, min(s.similarities), s.prev_check_mean))
        if c.passed is not None and conditional:
            s.guidance_scale = scales[c.passed]

    def _preview(self, checks: list[ImageCheck], scales) -> dict:
        """Opt-in (config.check_preview_steps): each image's first check sample at every candidate scale with a
        short sampler, all in one call; a scale whose preview is not within the margin of beta leaves the
        candidates, so its full sampler never runs. Returns {id(check): {scale: ([similarity], image)}} of the
        dropped scales."""
        inv, cfg = self.inv, self.inv.config
        conditional = checks[0].cond is not None
        parts = [(c, k) for c in checks for k in c.candidates]
        with inv.autocast():
            cond = cond_cat([cond_rows(c.cond, slice(0, 1)) for c, _ in parts]) if conditional else None
            images = inv.adapter.generate(torch.cat([c.noise[:1] for c, _ in parts]),
                                          steps=cfg.check_preview_steps, cond=cond,
                                          guidance=[scales[k] for _, k in parts] if conditional else 1.0,
                                          schedule=cfg.check_schedule)
        images = images.float().cpu()
        dropped: dict = {}
        for c in checks:
            rows = [i for i, (other, _) in enumerate(parts) if other is c]
            values = self.judge(images[rows], c.state)
            for i, v in zip(rows, values):
                k = parts[i][1]
                self.count(c.state, 1, inv.preview_steps, conditional, scales[k])
                if v < cfg.beta - cfg.check_preview_margin:
                    c.candidates.remove(k)
                    dropped.setdefault(id(c), {})[k] = ([v], images[i : i + 1])
        return dropped
