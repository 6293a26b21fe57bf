"""invmm: how strongly has a diffusion model memorized an image? (InvMM, Ma et al., ICCV 2025)"""

from invmm.config import PRESETS, InvMMConfig, preset
from invmm.errors import InvMMInputError
from invmm.monitor import MonitorCheck, TrainingMonitor
from invmm.records import ImageSummary, InversionRecord
from invmm.repeats import compare_scores
from invmm.runs.measure import measure

__all__ = ["ImageSummary", "InvMMConfig", "InvMMInputError", "InversionRecord", "MonitorCheck", "PRESETS",
           "TrainingMonitor", "compare_scores", "measure", "preset"]
__version__ = "0.1.0"
