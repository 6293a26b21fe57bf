"""What one image carries through the inversion: its target, its distribution and optimiser, its lambda and loss
history, its random streams and what it has cost; and the outcome it leaves."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from invmm.records import CheckRecord, InversionRecord


@dataclass
class Target:
    id: str
    pixels: torch.Tensor  # [C, S, S] in [-1, 1], as the model sees it
    path: str = ""
    caption: str | None = None
    class_label: str | None = None  # class-conditional models: the image's class (index or name)
    original_size: tuple[int, int] | None = None  # (width, height) of the file, for size-conditioned models (SDXL)
    repeat: int = 0  # which independent inversion of this image (its random streams follow from it)
    # Partial memorization: the region the check compares, [1, S, S] in [0, 1] in the model's frame (None: the
    # whole image, also for an all-ones mask), and what the record says of it (path, sha256, masked fraction).
    mask: torch.Tensor | None = None
    mask_info: dict | None = None


@dataclass
class ImageState:
    target: Target
    x0: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the optimisation's noise, timesteps and check noise
    image_seed: int
    lam: float
    cond: object | None = None  # conditioning.KnownPrompt / SoftPrompt / KnownClass / SoftClass
    sampler_gen: torch.Generator | None = None  # the check sampler's own noise (eta > 0)
    guidance_scale: float | None = None  # the scale at which the check passed
    prev_check_mean: float = math.inf
    step: int = 0
    rec_history: list[float] = field(default_factory=list)
    checks: list[CheckRecord] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)  # the last check's samples
    samples: torch.Tensor | None = None  # the last check's generated images
    map: torch.Tensor | None = None  # [S, S] memorization map at the last check (check.py)
    loss_weight: torch.Tensor | None = None  # [1, h, w] the mask on x0's grid, for a mask-weighted L_rec
    started: float = field(default_factory=time.perf_counter)
    calls: Counter = field(default_factory=Counter)  # model calls spent on this image (cost.py)
    check_skips: Counter = field(default_factory=Counter)  # checks decided by an opt-in shortcut: preview, rec
    # The refined score (inversion/refine.py): the distributions at the checks, the copy-probability estimates,
    # the paper's outcome once its check has passed, and the calls spent until then.
    snapshots: list = field(default_factory=list)
    refine_points: list = field(default_factory=list)
    paper: Outcome | None = None
    paper_calls: Counter | None = None
    refine_checks: int = 0
    # Early stopping (inversion/early_stop.py): the evidence gathered at each failed check, and why it stopped.
    stop_evidence: list = field(default_factory=list)  # (step, best similarity of the check's samples)
    stop_exams: list = field(default_factory=list)  # (step, copies, samples, best, first copy's index)
    check_scale: float = 1.0  # the guidance scale of the last check's kept samples
    early_stop: dict | None = None


@dataclass
class Outcome:
    result: InversionRecord
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    samples: torch.Tensor | None = None  # the last check's generated images, [-1, 1]
    map: torch.Tensor | None = None  # [S, S] memorization map at the last check
