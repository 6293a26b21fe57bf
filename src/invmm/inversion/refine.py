"""The refined score (opt-in, config.refine): the paper's score averaged over the success check's luck on the
image's own optimisation path, given a success within the budget (functional.expected_first_success).

Why: the paper's score is the KL at the first check (every C steps) whose n = 8 samples are all copies. A check
at per-sample copy probability p passes with p^8, so on one path the success comes a check or more early or late
by luck, and the score jumps with it. Here, once the paper's check has passed, the chance P_c that a check passes
(p^8; with several guidance scales, the chance that all 8 are copies at one of them) is estimated from
`refine_samples` fresh samples of the distribution at that check, each generated at every scale and judged exactly
as the check judges it (SuccessCheck.judge: the same similarity, over the same mask); then at the stored
distributions of the checks before it (walking back until a check's chance is below BACK_FLOOR) and at the
checks of the continued path (until the chance that no check has passed yet is below `refine_tail`, or the budget
ends), at most `refine_max_checks` each way. No check after `max_steps` is ever estimated: the paper never runs
one.

What the number is: with w_c = P_c prod_{c'<c} (1 - P_c') over the estimated checks, the refined score is
sum_c w_c KL_c / sum_c w_c, the expected paper score given that one of those checks passes, and
`refined_success` = sum_c w_c is the estimated chance that one does. When the continuation reached the budget,
1 - refined_success is the estimated chance that this path ends inf; when it stopped at `refine_tail` or
`refine_max_checks`, part of it is the chance of a later success that was not followed.

What holds, precisely: each P_c estimate is unbiased for the pass chance of the distribution at that check (a
hypergeometric U-statistic of its copy count). The refined score is a ratio of sums of products of these
estimates over a window of checks that is itself chosen from them (the walk back and the stop forward), so it is
not an unbiased estimate of anything; it is a plug-in estimate of E[paper score | path, a success within the
window], which it approaches as refine_samples grows. The window leaves out checks before it (each with an
estimated chance below BACK_FLOOR when the walk stopped) and after it (at most `refine_tail` of the chance).

The paper's record is taken at the success, before anything here runs, and nothing here draws from the image's
own streams: with one image per batch the paper's score and decisions stay exactly as without the refinement; in
batches of several, a refining image keeps its batch slot and so changes which images share a batch, which moves
the others' numbers by float noise only (scores within relative 1e-4, similarities within 1e-5; tested).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from invmm.families.conditions import cond_cat
from invmm.functional import (
    any_pass_probability,
    expected_first_success,
    kl_to_standard_normal,
    reparameterize,
    seed_from,
)
from invmm.inversion.state import ImageState, Outcome

# Walking back stops at a check whose estimated all-pass probability is below this: it and the checks before it
# add less than this to the expectation's weights (a p^8 of 0.01 is a per-sample p of 0.56).
BACK_FLOOR = 0.01


@dataclass
class Snapshot:
    """An image's distribution at a check: all a later pass-probability estimate needs."""

    step: int
    kl: float
    mu: torch.Tensor
    logvar: torch.Tensor
    logits: torch.Tensor | None  # a learned conditioning's logits


@dataclass
class Point:
    step: int
    kl: float
    masks: list[int]  # per sample: bit k set when it is a copy at guidance scale k
    samples: int
    passes: float  # the estimated probability that the paper's check passes here, at one of its scales


class Refiner:
    def __init__(self, inverter):
        self.inv = inverter
        cfg = inverter.config
        self.samples = cfg.refine_samples
        self.tail = cfg.refine_tail
        self.max_checks = cfg.refine_max_checks

    @torch.no_grad()
    def snapshot(self, s: ImageState) -> None:
        """The distribution now, kept on the CPU (a soft prompt's logits are vocabulary-sized); only the last
        refine_max_checks + 1 are kept, as many as a walk back can reach."""
        kl = float(kl_to_standard_normal(s.mu[None], s.logvar[None])[0])
        logits = s.cond.snapshot() if s.cond is not None else None
        s.snapshots.append(Snapshot(s.step, kl, s.mu.detach().cpu().clone(), s.logvar.detach().cpu().clone(),
                                    logits.cpu() if logits is not None else None))
        del s.snapshots[: -(self.max_checks + 1)]

    def begin(self, states: list[ImageState]) -> list[ImageState]:
        """The images whose paper check has just passed (their paper outcome taken, their last snapshot the
        success); returns those that are done, the rest go on optimising."""
        for s in states:
            s.paper_calls = Counter(s.calls)
        self._estimate([(s, s.snapshots[-1]) for s in states])
        back = list(states)
        for _ in range(self.max_checks):  # the stored checks before the success, while they could have passed
            back = [s for s in back if self._earlier(s) is not None]
            if not back:
                break
            self._estimate([(s, self._earlier(s)) for s in back])
        return [s for s in states if self._done(s)]

    def check(self, states: list[ImageState]) -> list[ImageState]:
        """A check of the continued path for images still refining; returns those that are done."""
        for s in states:
            # The paper's check would draw its noise (and prompts) here: take the same draws, so the continued path
            # is the one the paper would have followed had this image not passed yet.
            self.inv.check.draws(s, encode=False)
            self.snapshot(s)
            s.refine_checks += 1
        self._estimate([(s, s.snapshots[-1]) for s in states])
        return [s for s in states if self._done(s)]

    def _earlier(self, s: ImageState) -> Snapshot | None:
        first = min(s.refine_points, key=lambda p: p.step)
        if first.passes < BACK_FLOOR:
            return None
        return next((x for x in reversed(s.snapshots) if x.step < first.step), None)

    def _done(self, s: ImageState) -> bool:
        return self._ended(s) is not None

    def _ended(self, s: ImageState) -> str | None:
        """Why the continuation stops now, if it does: the budget (no later check exists for the paper), the chance
        left below refine_tail, or the checks' cap."""
        if s.step >= self.inv.config.max_steps:
            return "budget"
        if 1.0 - self._expectation(s)[2] < self.tail:
            return "tail"
        if s.refine_checks >= self.max_checks:
            return "max_checks"
        return None

    def _expectation(self, s: ImageState) -> tuple[float, float, float]:
        points = sorted(s.refine_points, key=lambda p: p.step)
        return expected_first_success([(p.kl, p.passes) for p in points])

    @torch.no_grad()
    def _estimate(self, items: list[tuple[ImageState, Snapshot]]) -> None:
        """`refine_samples` samples of each snapshot's distribution through the check's sampler, each at every
        guidance scale the paper's check tries (with the same noise and prompt draw across scales, as the check
        takes them), judged copy or not; batched over images as the check batches them."""
        inv, cfg, n = self.inv, self.inv.config, self.samples
        conditional = items[0][0].cond is not None if items else False
        scales = list(cfg.guidance_scales) if conditional else [1.0]
        per_call = max(1, (cfg.n_check_samples * inv.batch_images) // (n * len(scales)))
        for lo in range(0, len(items), per_call):
            chunk = items[lo : lo + per_call]
            noise, conds, gens, guidance = [], [], [], []
            for s, snap in chunk:
                seed = seed_from(s.image_seed, "refine", snap.step)
                gen = torch.Generator().manual_seed(seed)
                z = torch.randn((n, *s.x0.shape), generator=gen, device=gen.device)
                eps = reparameterize(snap.mu[None], snap.logvar[None], z).to(s.x0.device)
                cond = None
                if conditional:
                    g = torch.Generator(device=inv.adapter.device).manual_seed(seed_from(seed, "prompt"))
                    logits = snap.logits.to(inv.adapter.device) if snap.logits is not None else None
                    with inv.meter.metered(s.calls):
                        cond = s.cond.check_at(n, logits, g)
                for k, scale in enumerate(scales):
                    noise.append(eps)
                    conds += [cond] if conditional else []
                    # eta > 0: one sampler stream per (image, scale), as the check's rows share the image's one.
                    gens += [torch.Generator().manual_seed(seed_from(seed, "sampler", k))] * n if cfg.eta > 0 else []
                    guidance += [scale] * n
            with inv.autocast():
                images = inv.adapter.generate(torch.cat(noise), steps=cfg.sampler_steps, eta=cfg.eta,
                                              cond=cond_cat(conds) if conditional else None,
                                              guidance=guidance if conditional else 1.0,
                                              generator=gens or None, schedule=cfg.check_schedule)
            images = images.float().cpu()
            rows = n * len(scales)
            for i, (s, snap) in enumerate(chunk):
                masks = [0] * n
                for k, scale in enumerate(scales):
                    start = i * rows + k * n
                    for j, v in enumerate(inv.check.judge(images[start : start + n], s)):  # as the check judges
                        masks[j] |= (v >= cfg.beta) << k
                    inv.check.count(s, n, inv.check_steps, conditional, scale)
                s.refine_points.append(Point(snap.step, snap.kl, masks, n,
                                             any_pass_probability(masks, len(scales), cfg.n_check_samples)))

    def outcome(self, s: ImageState, error: str | None = None) -> Outcome:
        """The paper's outcome with the refined score and what it was computed from; its calls and seconds
        include the refinement's."""
        out = s.paper
        mean, sd, chance = self._expectation(s)
        extra = {k: v - s.paper_calls.get(k, 0) for k, v in s.calls.items() if v - s.paper_calls.get(k, 0)}
        fallback = not chance > 0  # no estimated check could pass: the one success seen, the paper's, stands
        out.result.refined_score = out.result.score if fallback else mean
        out.result.refined_success = round(chance, 6)
        out.result.refine = {
            "samples": self.samples, "sd": 0.0 if fallback else round(sd, 6), "leftover": round(1.0 - chance, 6),
            "ended": "error" if error else self._ended(s) or "max_checks",
            **({"fallback": "no estimated check could pass; the paper's score"} if fallback else {}),
            "extra_steps": s.step - out.result.steps, "calls": extra,
            # per check: step, KL, samples that are copies (at some scale), samples, the estimated chance that
            # the paper's check passes there, and with several guidance scales each sample's copy bits
            "points": [[p.step, p.kl, sum(m > 0 for m in p.masks), p.samples, p.passes,
                        *([p.masks] if len(self.inv.config.guidance_scales) > 1 and s.cond is not None else [])]
                       for p in sorted(s.refine_points, key=lambda p: p.step)],
            **({"error": error} if error else {}),
        }
        out.result.calls = dict(s.calls)
        out.result.seconds = round(time.perf_counter() - s.started, 3)
        return out
