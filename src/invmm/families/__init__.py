"""The model families: one module each (ddpm, ldm, sd, sdxl, sd3, flux, pixart, dit), the contract they meet
(base.py) and the registry that detects, loads and lists them (registry.py)."""

from invmm.families.base import CAPABILITIES, CLASS, NOISE_SCHEDULE, TEXT, Family, ModelAdapter
from invmm.families.registry import FAMILIES, PRESETS, build_tiny, family, load_adapter, load_options, tiny_variants

__all__ = ["CAPABILITIES", "CLASS", "FAMILIES", "Family", "ModelAdapter", "NOISE_SCHEDULE", "PRESETS", "TEXT",
           "build_tiny", "family", "load_adapter", "load_options", "tiny_variants"]
