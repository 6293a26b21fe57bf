"""Baseline scores beside InvMM, one file each, behind one small interface (see base.py)."""

from invmm.scorers.base import Scorer, ScorerError
from invmm.scorers.loss import LossScorer
from invmm.scorers.pia import PIAScorer
from invmm.scorers.secmi import SecMIScorer

__all__ = ["LossScorer", "PIAScorer", "Scorer", "ScorerError", "SecMIScorer"]
