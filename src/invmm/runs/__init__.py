"""What executes a run: the one engine (measure, audit) and its sessions, the screen, evaluate's scores, --mask auto,
the Ray backends and merge. Where images come from is data/, the run folder as storage store/."""

from invmm.runs.engine import RunSummary, run_images
from invmm.store.files import LEDGER_FILE, RUN_FILE, Ledger

__all__ = ["LEDGER_FILE", "RUN_FILE", "Ledger", "RunSummary", "run_images"]
