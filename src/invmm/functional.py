"""Pure math of InvMM: no models, no I/O. Every function here has a reference test."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def seed_from(*parts) -> int:
    """A 63-bit seed derived from the run seed and names (e.g. an image id), stable across runs and machines."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu, exp(logvar)) || N(0, 1)), averaged over all but the leading (image) dimension.

    This is InvMM's normality term L_norm and, at the first success, its score.
    """
    per_dim = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return per_dim.flatten(1).mean(1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """eps = mu + sigma * z, broadcasting mu/logvar [K, 1, ...] against z [K, B, ...]."""
    return mu + torch.exp(0.5 * logvar) * z


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Forward diffusion x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, with abar shaped to broadcast."""
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * eps


def x0_from_prediction(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model's estimate of x0 from its raw output, for each diffusers prediction type."""
    if prediction_type == "epsilon":
        return (x_t - (1.0 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def x0_from_flow_velocity(velocity: torch.Tensor, x_s: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow matching: x_s = s * noise + (1 - s) * x0 and v = noise - x0, hence x0 = x_s - s * v."""
    return x_s - sigma * velocity


def update_lambda(
    lam: float,
    step: int,
    rec_history: list[float],
    prev_check_mean: float,
    *,
    check_every: int,
    window: int,
    delta: float,
    xi: float,
) -> tuple[float, float, bool]:
    """InvMM's adaptive weight of the normality term after optimisation step `step` (1-based).

    Off check steps lambda grows by delta. On a check step (every `check_every` steps) the mean of the
    last `window` reconstruction losses is compared with its value at the previous check (+inf at the
    first); if it improved by less than xi, lambda is halved so sensitivity gets room, else it grows
    by delta. Returns (new lambda, mean to compare against at the next check, whether this was a check).
    """
    if step % check_every != 0:
        return lam + delta, prev_check_mean, False
    recent = rec_history[-window:]
    current = sum(recent) / len(recent) if recent else math.inf
    improvement = prev_check_mean - current
    if improvement < xi:
        return lam * 0.5, current, True
    return lam + delta, current, True


def concordance_correlation(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lin's concordance correlation coefficient between flattened images, row by row.

    2 cov(a, b) / (var a + var b + (mean a - mean b)^2): 1 only for identical images, and unlike Pearson
    correlation it penalises changes of brightness and contrast, so a faint or shifted copy is no copy.
    With `weight` (a mask, binary or soft, broadcastable to the images: one per row or one for all) every moment
    is the weighted one, so only the masked region counts (partial memorization); a row whose mask is empty has
    no defined value and is NaN.
    """
    empty = None
    if weight is not None:
        w = weight.double().expand_as(a).flatten(1)
        total = w.sum(1, keepdim=True)
        empty = total[:, 0] <= 0
        w = w / total.clamp_min(1e-300)
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    if weight is None:
        ma, mb = a.mean(1), b.mean(1)
        va, vb = a.var(1, unbiased=False), b.var(1, unbiased=False)
        cov = ((a - ma[:, None]) * (b - mb[:, None])).mean(1)
    else:
        ma, mb = (w * a).sum(1), (w * b).sum(1)
        da, db = a - ma[:, None], b - mb[:, None]
        va, vb, cov = (w * da * da).sum(1), (w * db * db).sum(1), (w * da * db).sum(1)
    denom = va + vb + (ma - mb).pow(2)
    # Two identical constant images have zero denominator; they are copies of each other.
    ccc = torch.where(denom > 0, 2 * cov / denom.clamp_min(1e-300), torch.ones_like(denom))
    if empty is not None:
        ccc = torch.where(empty, torch.full_like(ccc, float("nan")), ccc)
    return ccc.float()


# A pixel is "reproduced" where the memorization map reaches this: at least half the fitted samples reproduce it
# beyond what the prior's samples do. It thresholds the map for `--mask auto` and the reproduced fraction.
MAP_THRESHOLD = 0.5


def map_window(side: int) -> int:
    """The neighbourhood a reproduction map compares over: one pixel for tiny images, about 1/32 of the side
    (odd) for larger ones, so that a texture reproduced a pixel off still counts."""
    w = max(1, side // 32)
    return w if w % 2 else w + 1


def reproduction_map(samples: torch.Tensor, target: torch.Tensor, *, tolerance: float = 0.1,
                     window: int = 1) -> torch.Tensor:
    """The share of `samples` ([N, C, S, S] in [-1, 1]) that reproduce `target` ([C, S, S]) at each pixel: a
    sample reproduces a pixel when its mean absolute difference from the target over the channels and the
    window x window neighbourhood, in [0, 1] intensity units, is at most `tolerance`. Returns [S, S] in [0, 1]."""
    err = (samples.double() - target.double()[None]).abs().mean(1, keepdim=True) / 2
    if window > 1:
        err = torch.nn.functional.avg_pool2d(err, window, stride=1, padding=window // 2, count_include_pad=False)
    return (err[:, 0] <= tolerance).double().mean(0).float()


def memorization_map(fitted: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """How much more often samples from the fitted distribution reproduce each pixel than samples from the prior
    N(0, I) do (both reproduction maps), clipped at 0: a region any sample reproduces (a blank background) is
    no evidence of memorization, a region only the fitted noise reproduces is."""
    return (fitted - prior).clamp(0.0, 1.0)


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel draws, -log(Exp(1)), from an explicit generator (same recipe as torch's gumbel_softmax),
    on the generator's device: a vocabulary-sized draw per sample is too large to make on the CPU and copy."""
    return -torch.empty(shape, device=generator.device).exponential_(generator=generator).log()


def gumbel_softmax_sample(logits: torch.Tensor, gumbels: torch.Tensor, tau: float) -> torch.Tensor:
    """Relaxed one-hot sample softmax((logits + g) / tau) over the last dimension (Jang et al. 2017)."""
    return torch.softmax((logits + gumbels) / tau, dim=-1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[K, C, H, W] in [-1, 1] -> uint8 [K, H, W, C]."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def all_pass_probability(copies: int, samples: int, n: int) -> float:
    """Unbiased estimate of p^n, the chance that all n samples of a check are copies, from `copies` of `samples`
    i.i.d. samples: the chance that n of them drawn without replacement are all copies, C(copies, n) / C(samples, n)."""
    if samples < n:
        raise ValueError(f"estimating an {n}-of-{n} check needs at least {n} samples, got {samples}")
    return math.comb(copies, n) / math.comb(samples, n)


def any_pass_probability(masks, scales: int, n: int) -> float:
    """Unbiased estimate of the chance that a check of n samples passes at one of its guidance scales at least
    (every sample a copy at that scale), from i.i.d. samples each generated at every scale: `masks[j]` has bit k
    set when sample j is a copy at scale k. Inclusion-exclusion over the sets T of scales, with
    C(#samples that are copies at every scale in T, n) / C(#samples, n) the chance that n of them drawn without
    replacement are; with one scale this is all_pass_probability."""
    samples = len(masks)
    if samples < n:
        raise ValueError(f"estimating an {n}-sample check needs at least {n} samples, got {samples}")
    total = 0.0
    for t in range(1, 1 << scales):
        both = sum((m & t) == t for m in masks)
        total += (-1) ** (bin(t).count("1") + 1) * math.comb(both, n)
    return total / math.comb(samples, n)


def expected_first_success(points) -> tuple[float, float, float]:
    """The paper's score averaged over the check's luck on one optimisation path, given that one of `points`
    passes (a Rao-Blackwellisation of the paper's verdict).

    `points`: (kl, pass probability) of consecutive checks along the path, in step order, none after the budget.
    The paper stops at the first check that passes, so it scores KL_c with probability
    w_c = P_c * prod_{c' < c} (1 - P_c'). Returns (E[KL | a check of `points` passes], the standard deviation of
    that conditional law, the chance sum_c w_c that one passes). The rest, 1 - sum_c w_c, is the chance that none
    does (past the budget: the paper's inf); it is returned, never put on a KL. With no chance at all the first two
    are NaN.
    """
    if not points:
        raise ValueError("expected_first_success needs at least one check")
    survive, weights = 1.0, []
    for _, p in points:
        weights.append(survive * p)
        survive *= 1.0 - p
    w = np.array(weights)
    total = float(w.sum())
    if total <= 0.0:
        return math.nan, math.nan, 0.0
    kls = np.array([kl for kl, _ in points], dtype=float)
    mean = float(w @ kls / total)
    return mean, float(math.sqrt(max(0.0, w @ (kls - mean) ** 2 / total))), total
