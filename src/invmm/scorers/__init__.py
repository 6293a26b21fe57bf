"""Baseline scores beside InvMM, one file each, behind one small interface (see base.py)."""

from invmm.scorers.base import Scorer, ScorerError
from invmm.scorers.generate_compare import GenerateCompareScorer
from invmm.scorers.loss import LossScorer
from invmm.scorers.noise_norm import NoiseNormScorer
from invmm.scorers.pia import PIAScorer
from invmm.scorers.secmi import SecMIScorer

__all__ = [
    "GenerateCompareScorer", "LossScorer", "NoiseNormScorer", "PIAScorer", "Scorer", "ScorerError", "SecMIScorer",
]
