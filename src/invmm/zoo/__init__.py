"""Toy diffusion models with planted memorization, for the demo, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIGITS = Path(__file__).parent / "digits_model"
SHIPPED_DIGITS_T2I = Path(__file__).parent / "digits_t2i_model"
SHIPPED_DIGITS_LORA = Path(__file__).parent / "digits_t2i_lora"
SHIPPED_DIGITS_DIT = Path(__file__).parent / "digits_dit_model"
SHIPPED_DIGITS_TEMPLATE = Path(__file__).parent / "digits_template_model"


def shipped_digits_model() -> Path:
    """The trained toy digits model that ships inside the package (see zoo/digits_model/README.md)."""
    if not (SHIPPED_DIGITS / "model_index.json").exists():
        raise FileNotFoundError(f"the shipped toy model is missing from {SHIPPED_DIGITS}; reinstall invmm")
    return SHIPPED_DIGITS


def shipped_digits_t2i_model() -> Path:
    """The trained toy text-to-image digits model that ships inside the package."""
    if not (SHIPPED_DIGITS_T2I / "model_index.json").exists():
        raise FileNotFoundError(f"the shipped toy text-to-image model is missing from {SHIPPED_DIGITS_T2I}")
    return SHIPPED_DIGITS_T2I


def shipped_digits_lora() -> Path:
    """The toy LoRA fine-tune of the text-to-image digits model (see zoo/digits_t2i_lora/README.md)."""
    if not (SHIPPED_DIGITS_LORA / "manifest.json").exists():
        raise FileNotFoundError(f"the shipped toy LoRA is missing from {SHIPPED_DIGITS_LORA}")
    return SHIPPED_DIGITS_LORA


def shipped_digits_dit_model() -> Path:
    """The trained toy class-conditional DiT on the digits (see zoo/digits_dit_model/README.md)."""
    if not (SHIPPED_DIGITS_DIT / "model_index.json").exists():
        raise FileNotFoundError(f"the shipped toy class-conditional DiT is missing from {SHIPPED_DIGITS_DIT}")
    return SHIPPED_DIGITS_DIT


def shipped_digits_template_model() -> Path:
    """The toy digits DDPM with planted template (partial) memorization (see zoo/digits_template_model/README.md)."""
    if not (SHIPPED_DIGITS_TEMPLATE / "model_index.json").exists():
        raise FileNotFoundError(f"the shipped template toy is missing from {SHIPPED_DIGITS_TEMPLATE}")
    return SHIPPED_DIGITS_TEMPLATE
