"""The adaptive InvMM algorithm, family-agnostic: the optimisation step (optimise.py), the success check
(check.py), the batch loop that joins them (inverter.py), the per-image state (state.py), what a conditional
model is conditioned on while it runs (conditioning.py) and what it costs in model calls (cost.py)."""

from invmm.inversion.inverter import Inverter, apply_memory_options, check_grid
from invmm.inversion.state import ImageState, Outcome, Target

__all__ = ["ImageState", "Inverter", "Outcome", "Target", "apply_memory_options", "check_grid"]
