"""CLiD, conditional likelihood discrepancy (Zhai et al., "Membership Inference on Text-to-Image Diffusion Models
via Conditional Likelihood Discrepancy", NeurIPS 2024; code: github.com/zhaisf/CLiD, mia_CLiD_impt.py and
cal_clid_th.py).

Text-to-image models overfit p(x | c) more than p(x): a member's denoising loss rises more when its caption is
degraded. With L(c) = mean ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c)||^2 / d over the
Monte-Carlo draws (one noise per timestep, timesteps t_mid - t_interval, t_mid, t_mid + t_interval, ... as
the authors' 440, 450, 460), the same (t, eps) pairs for every condition, the score is

    CLiD = mean_k [ L(c*_k) - L(c) ]

over the degraded captions c*_k: the caption with its top 30%, 50% and 70% words replaced by the tokenizer's
end-of-text token, and the empty caption. Higher = member. The authors rank words by a precomputed importance
(their reference metadata, not published); here the ranking is a random permutation drawn from the image's own
stream (degrade="random"), cut at the same rates, so the degradations are nested as theirs are.
degrade="thirds" is their mia_CLiD_clip.py instead: each third of the caption's characters alone.

CLiD_th combines this with L(c) through a RobustScaler and a weight alpha fitted on a shadow model's scores; a
per-image score has no shadow data, so the scalar here is its alpha = 1 term. `features()` gives CLiD_vec's
inputs, the rows [L(c), L(c*_1) - L(c), ..., L("") - L(c)] the authors write out and fit a classifier on.
The true caption is required: an image without one is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from invmm.families.base import NOISE_SCHEDULE, TEXT
from invmm.families.conditions import cond_cat, cond_rows
from invmm.functional import seed_from
from invmm.scorers.base import Scorer, ScorerError, check_timesteps

DEGRADATIONS = ("random", "thirds")


def cut_count(rate: float, n_words: int) -> int:
    """How many of n words a cut rate removes, by the authors' threshold rule: every word ranked at or above
    position int(rate * n - 0.01) (0-based) goes, so 30% of 3 words is 1 and 50% of 4 is 2."""
    return min(n_words, int(rate * n_words - 0.01) + 1)


def degrade_caption(caption: str, rates, generator: torch.Generator, mask: str = "<|endoftext|>") -> list[str]:
    """The caption with its ceil-like `rate` fraction of words replaced by `mask` (dropped if mask is ""), one
    caption per rate; the words go in the order of one random ranking, so a higher rate removes a superset."""
    words = caption.split()
    order = torch.randperm(len(words), generator=generator, device=generator.device).tolist()
    out = []
    for rate in rates:
        cut = set(order[: cut_count(rate, len(words))])
        kept = [mask if i in cut else w for i, w in enumerate(words)]
        out.append(" ".join(w for w in kept if w))
    return out


def caption_thirds(caption: str) -> list[str]:
    n = len(caption)
    return [caption[: int(n / 3)], caption[int(n / 3) : int(2 * n / 3)], caption[int(2 * n / 3) :]]


def clid_timesteps(t_mid: int, t_interval: int, n: int) -> list[int]:
    """n timesteps t_interval apart around t_mid, the lower side first when n is even (the authors' order
    of growth: 450; 440, 450; 440, 450, 460; 430, ..., 460)."""
    return [t_mid + j * t_interval for j in range(-(n // 2), n - n // 2)]


@dataclass
class CLiDScorer(Scorer):
    t_mid: int = 450
    t_interval: int = 10
    n_draws: int = 3
    # Cut rates of the degraded captions; a list, or a string "0.3 0.5 0.7" (spec strings split on commas).
    cut_rates: tuple = (0.3, 0.5, 0.7)
    null: bool = True  # the empty caption as one more degraded condition (the authors' condNull)
    degrade: str = "random"

    name = "clid"
    higher_is_better = True
    requires = (NOISE_SCHEDULE, TEXT)
    needs_caption = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._captions: dict[str, str] = {}  # the batch being scored: _score's degradations start from them
        if isinstance(self.n_draws, bool) or not isinstance(self.n_draws, int) or self.n_draws < 1:
            raise ScorerError(f"scorer 'clid': n_draws={self.n_draws!r} must be a positive number of timesteps")
        check_timesteps(self, t_mid=self.t_mid, t_interval=self.t_interval)
        ts = self.timesteps()
        check_timesteps(self, **{"lowest timestep": ts[0], "highest timestep": ts[-1]})
        if self.n_draws > 1 and self.t_interval < 1:
            raise ScorerError(f"scorer 'clid': t_interval={self.t_interval} must be positive")
        if self.degrade not in DEGRADATIONS:
            raise ScorerError(f"scorer 'clid': degrade={self.degrade!r}; expected one of {', '.join(DEGRADATIONS)}")
        rates = self.cut_rates
        try:
            rates = [float(r) for r in (re.split(r"[\s/]+", rates.strip()) if isinstance(rates, str) else rates)]
        except (TypeError, ValueError):
            raise ScorerError(f"scorer 'clid': cut_rates={self.cut_rates!r} must be numbers in (0, 1], e.g. "
                              "'0.3 0.5 0.7'") from None
        if not all(0 < r <= 1 for r in rates) or (self.degrade == "random" and not rates):
            raise ScorerError(f"scorer 'clid': cut_rates={self.cut_rates!r} must be numbers in (0, 1]")
        self.cut_rates = tuple(rates)
        # The authors' stand-in for a removed word (the first tokenizer's end token); without one the word is lost.
        self.mask = self.adapter.tokenizers[0].eos_token or ""

    def timesteps(self) -> list[int]:
        return clid_timesteps(self.t_mid, self.t_interval, self.n_draws)

    def degraded_captions(self, caption: str, image_id: str, seed: int = 0) -> list[str]:
        """The degraded conditions c*_k of one image, in the order of features()' columns."""
        if self.degrade == "thirds":
            out = caption_thirds(caption)
        else:
            g = torch.Generator().manual_seed(seed_from(seed, self.name, "captions", image_id))
            out = degrade_caption(caption, self.cut_rates, g, self.mask)
        return out + ([""] if self.null else [])

    def score(self, images: torch.Tensor, ids: list[str], captions: list[str | None] | None = None,
              seed: int = 0) -> list[float]:
        self._captions = self._checked_captions(ids, captions)
        return super().score(images, ids, captions, seed)

    def features(self, images: torch.Tensor, ids: list[str], captions: list[str | None] | None = None,
                 seed: int = 0) -> torch.Tensor:
        """CLiD_vec's inputs: [K, 1 + M] rows [L(c), L(c*_1) - L(c), ..., L(c*_M) - L(c)]; score() is the
        mean of the last M columns."""
        self._captions = self._checked_captions(ids, captions)
        with torch.no_grad():
            x0 = self.adapter.encode(images)
            return self._rows(self.adapter, x0, ids, self.adapter.prompt_embeddings(list(captions)), seed)

    def _checked_captions(self, ids, captions) -> dict[str, str]:
        captions = list(captions or [None] * len(ids))
        missing = [i for i, c in zip(ids, captions) if not (c and c.strip())]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                               else "")
            raise ScorerError(f"scorer 'clid' compares the loss under each image's true caption with degraded "
                              f"ones, but image(s) {shown} have no caption; give captions (a 'caption' column in "
                              "the manifest) or leave 'clid' out")
        return dict(zip(ids, captions))

    def _score(self, adapter, x0, ids, cond, seed):
        return self._rows(adapter, x0, ids, cond, seed)[:, 1:].mean(1)

    def _rows(self, adapter, x0, ids, cond, seed):
        ts = torch.tensor(self.timesteps(), device=adapter.device)
        n = len(ts)
        rows = []
        for i, image_id in enumerate(ids):
            texts = self.degraded_captions(self._captions[image_id], image_id, seed)
            m = 1 + len(texts)
            # Row 0 the true caption, then each degraded one; every condition sees the same (t, eps) pairs.
            conds = cond_cat([cond_rows(cond, slice(i, i + 1)), adapter.prompt_embeddings(texts)])
            g = self.generator(seed, image_id)
            eps = torch.randn((n, *x0.shape[1:]), generator=g, device=g.device).to(adapter.device)
            x_t = adapter.add_noise(x0[i : i + 1].expand_as(eps), eps, ts)
            tile = (m,) + (1,) * (eps.ndim - 1)
            pred = adapter.eps_prediction(x_t.repeat(tile), ts.repeat(m),
                                          cond_rows(conds, torch.arange(m, device=adapter.device).repeat_interleave(n)))
            loss = (pred - eps.repeat(tile)).pow(2).flatten(1).mean(1).view(m, n).mean(1)
            rows.append(torch.cat([loss[:1], loss[1:] - loss[0]]))
        return torch.stack(rows)
