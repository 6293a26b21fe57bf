"""Baseline scores beside InvMM, one file each, behind one small interface (see base.py)."""

from __future__ import annotations

import dataclasses

from invmm.config import default_config
from invmm.scorers.anisotropy import AnisotropyScorer
from invmm.scorers.base import Scorer, ScorerError
from invmm.scorers.clid import CLiDScorer
from invmm.scorers.generate_compare import GenerateCompareScorer
from invmm.scorers.invmm_score import InvMMScorer
from invmm.scorers.loss import LossScorer
from invmm.scorers.noise_norm import NoiseNormScorer
from invmm.scorers.pia import PIAScorer
from invmm.scorers.secmi import SecMIScorer
from invmm.scorers.sharpness import SharpnessScorer
from invmm.scorers.sima import SimAScorer
from invmm.spec import parse_spec as _parse_spec

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (InvMMScorer, LossScorer, SecMIScorer, PIAScorer, GenerateCompareScorer, NoiseNormScorer)
} | {cls.name: cls for cls in (SimAScorer, CLiDScorer, AnisotropyScorer, SharpnessScorer)}
# What `invmm evaluate` scores when no --scorers are given: those of them the model can run.
DEFAULT_SCORERS = ("invmm", "loss", "secmi", "pia", "generate_compare")
# The one-pass scorers a screen may rank with (`--screen`); `auto` takes the first the model can run.
SCREEN_SCORERS = ("loss", "sima", "secmi", "pia", "clid", "noise_norm", "generate_compare")


def runnable(names, adapter) -> tuple[list[str], dict[str, str]]:
    """The scorers of `names` the model can run, and for each other one what the model lacks."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ScorerError(f"unknown scorer {unknown[0]!r}; available: {', '.join(SCORERS)}")
    missing = {n: " and ".join(SCORERS[n].missing(adapter)) for n in names}
    return [n for n in names if not missing[n]], {n: why for n, why in missing.items() if why}


def default_scorers(adapter) -> tuple[str, dict[str, str]]:
    """The default scorers as a spec string for this model, and the defaults it cannot run with the reason."""
    names, left_out = runnable(DEFAULT_SCORERS, adapter)
    return ",".join(names), left_out


def auto_screen(adapter, *, captions: bool = True) -> str:
    """The screen scorer `--screen auto` stands for: the first of SCREEN_SCORERS the model can run (one needing
    captions only when every image has one)."""
    names, _ = runnable(SCREEN_SCORERS, adapter)
    names = [n for n in names if captions or not SCORERS[n].needs_caption]
    return names[0]


def parse_spec(spec: str) -> tuple[str, dict]:
    """A scorer spec ("pia" or "pia:t=100,p=2", invmm.spec) -> its name and options; a malformed one is a
    ScorerError."""
    try:
        return _parse_spec(spec)
    except ValueError as exc:
        raise ScorerError(f"scorer {exc}") from None


def split_specs(text: str) -> list[str]:
    """"invmm,loss" or "loss;pia:t=100,p=2;invmm" -> one spec per scorer. ';' separates specs; inside a
    chunk, names before the one carrying options may be comma-separated ("invmm,pia:t=100")."""
    specs = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        head, sep, options = chunk.partition(":")
        names = [n.strip() for n in head.split(",") if n.strip()]
        if sep and names:
            names[-1] += sep + options
        specs += names
    return specs



def build_scorer(spec: str, adapter, *, invmm_config=None, **invmm_options) -> Scorer:
    """A scorer bound to the adapter from a spec string. Options of "invmm" override its InvMMConfig."""
    name, options = parse_spec(spec)
    if name not in SCORERS:
        raise ScorerError(f"unknown scorer {name!r}; available: {', '.join(SCORERS)}")
    cls = SCORERS[name]
    if cls is InvMMScorer:
        batch = options.pop("batch_images", invmm_options.pop("batch_images", 8))
        repeats = options.pop("repeats", invmm_options.pop("repeats", 1))
        by = options.pop("by", "paper")
        if by == "refined":
            options["refine"] = True
        base = invmm_config or default_config(adapter, **{k: v for k, v in invmm_options.items() if k == "preset"})
        try:
            config = base.replace(**options)
        except (TypeError, ValueError) as exc:
            raise ScorerError(f"invalid invmm options in {spec!r}: {exc}") from None
        return InvMMScorer(adapter, config=config, batch_images=batch, repeats=repeats, by=by)
    known = {f.name for f in dataclasses.fields(cls)} - {"adapter"}
    unknown = set(options) - known
    if unknown:
        raise ScorerError(f"scorer {name!r} has no option(s) {', '.join(sorted(unknown))}; "
                          f"it takes {', '.join(sorted(known))}")
    return cls(adapter, **options)


__all__ = [
    "AnisotropyScorer", "CLiDScorer", "DEFAULT_SCORERS", "GenerateCompareScorer", "InvMMScorer", "LossScorer",
    "NoiseNormScorer", "PIAScorer", "SCORERS", "SCREEN_SCORERS", "Scorer", "ScorerError", "SecMIScorer",
    "SharpnessScorer", "SimAScorer", "auto_screen", "build_scorer", "default_scorers", "parse_spec", "runnable",
    "split_specs",
]
