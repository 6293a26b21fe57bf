"""Early stopping of inversions that will not be reproduced within the budget (opt-in: config.early_stop).

Almost all of an audit's compute goes to images that run their whole budget to end as inf. The rule stops them
from what the inversion has shown, never from a fixed step alone:

- **A sign of a copy** is a sample of the image's current distribution N(mu, sigma^2) that the check's similarity
  already counts as a copy (>= beta). Every check's own samples are looked at (free: the check drew them).
- **The examination**: at its first failed check at or after `early_stop_patience` steps, an image that has shown
  no sign is examined: `early_stop_samples` m samples of its current distribution (its centre mu and m - 1 draws),
  generated as the check generates them, at the guidance scale its last check came closest at. If none is a copy
  it stops there: with 95% confidence fewer than about 3/m of its distribution's samples are copies (the rule of
  three), while a success needs all n check samples to be copies at once. If one is, it runs its whole budget as
  without the option.

Why this separates, and where the defaults come from: a memorized image's distribution puts part of its mass on
the copy long before all n check samples land there together, which is what a success needs; an image that is not
memorized approaches its target without crossing beta. The patience and m are calibrated on full-budget runs of
the shipped toys (benchmarks/early_stop.py, docs/benchmarks/early-stopping.md), where the false stops on runs the
calibration did not see are measured.

The examination draws from the image's own "stop-exam-<step>" stream and touches no stream the inversion uses, so
a stopped inversion's steps up to its stop are the full run's, and an image that is not stopped runs exactly as
without the option. Its samples are counted as `stop_forward`. With a patience beyond the budget nothing stops and
images are examined at OBSERVED_STEPS instead: the records then hold what the rule at each of those patiences
would have seen (the calibration's observe runs).
"""

from __future__ import annotations

import torch

from invmm.families.conditions import cond_cat
from invmm.functional import reparameterize, seed_from
from invmm.inversion.state import ImageState

RULE = "no-copy-sign"
OBSERVED_STEPS = (200, 300, 400, 500, 600, 800, 1000)


class EarlyStop:
    def __init__(self, inverter):
        self.inv = inverter  # the adapter, config, similarity, check (its judge and counts) and autocast

    @property
    def observing(self) -> bool:
        return self.inv.config.early_stop_patience > self.inv.config.max_steps

    def due(self, s: ImageState) -> bool:
        """Whether the image is examined now: it has shown no sign, and this is its first check at or after the
        patience (observing: its first check at or after each of OBSERVED_STEPS)."""
        cfg = self.inv.config
        if any(v >= cfg.beta for _, v in s.stop_evidence):
            return False
        if self.observing:
            last = s.stop_exams[-1][0] if s.stop_exams else 0
            return any(last < p <= s.step for p in OBSERVED_STEPS)
        return s.step >= cfg.early_stop_patience and not s.stop_exams

    @torch.no_grad()
    def __call__(self, states: list[ImageState]) -> list[ImageState]:
        """After a failed check with budget left: the evidence of the check, the examinations due, and the images
        that stop now."""
        cfg = self.inv.config
        for s in states:
            s.stop_evidence.append((s.step, max(s.similarities, default=0.0)))
        due = [s for s in states if self.due(s)]
        if due:
            for s, values in zip(due, self.examine(due)):
                copies = [i for i, v in enumerate(values) if v >= cfg.beta]
                # the first copy's place: what an examination of fewer samples would have found (the calibration)
                s.stop_exams.append((s.step, len(copies), len(values), max(values), copies[0] if copies else None))
        stopped = []
        for s in due:
            if not self.observing and s.stop_exams[-1][1] == 0:
                s.early_stop = {"rule": RULE, "step": s.step, "patience": cfg.early_stop_patience,
                                "samples": cfg.early_stop_samples, "beta": cfg.beta}
                stopped.append(s)
        return stopped

    def examine(self, states: list[ImageState]) -> list[list[float]]:
        """Each image's m examination samples (its centre and m - 1 draws of its distribution, from its own
        "stop-exam-<step>" stream) at the scale its last check came closest at, judged as the check judges: one
        sampler call for all images."""
        inv, cfg = self.inv, self.inv.config
        m = cfg.early_stop_samples
        conditional = states[0].cond is not None
        noises, conds, rows = [], [], []
        for s in states:
            gen = torch.Generator().manual_seed(seed_from(s.image_seed, f"stop-exam-{s.step}"))
            z = torch.randn((m, *s.x0.shape), generator=gen, device=gen.device).to(s.x0.device)
            z[0] = 0  # the centre
            noises.append(reparameterize(s.mu.detach()[None], s.logvar.detach()[None], z))
            scale = s.check_scale if conditional else 1.0
            if conditional:
                g = torch.Generator(device=inv.adapter.device).manual_seed(
                    seed_from(s.image_seed, f"stop-prompt-{s.step}"))
                with inv.meter.metered(s.calls):
                    conds.append(s.cond.check_at(m, s.cond.snapshot(), g))
            rows += [(scale, gen)] * m
            inv.check.count(s, m, inv.check_steps, conditional, scale, kind="stop_forward")
        with inv.autocast():
            images = inv.adapter.generate(torch.cat(noises), steps=cfg.sampler_steps, eta=cfg.eta,
                                          cond=cond_cat(conds) if conditional else None,
                                          guidance=[k for k, _ in rows] if conditional else 1.0,
                                          generator=[g for _, g in rows] if cfg.eta > 0 else None,
                                          schedule=cfg.check_schedule)
        images = images.float().cpu()
        return [inv.check.judge(images[i * m : (i + 1) * m], s) for i, s in enumerate(states)]

    def record(self, s: ImageState) -> dict:
        """The record's `early_stop` in a run with the option: whether it stopped early (and where), the first
        check whose samples showed a sign of a copy (None: none), the best similarity they reached, and the
        examinations ([step, copies, samples, best similarity, index of the first copy])."""
        cfg = self.inv.config
        return {"stopped": s.early_stop is not None, **(s.early_stop or {}),
                "first_sign": next((step for step, v in s.stop_evidence if v >= cfg.beta), None),
                "best_similarity": max((v for _, v in s.stop_evidence), default=None),
                "exams": [list(e) for e in s.stop_exams]}
