"""Run folders and the one engine that fills them (measure, audit) or keeps scores in them (evaluate)."""

from invmm.runs.engine import RunSummary, run_images
from invmm.runs.files import LEDGER_FILE, RUN_FILE, Ledger

__all__ = ["LEDGER_FILE", "RUN_FILE", "Ledger", "RunSummary", "run_images"]
