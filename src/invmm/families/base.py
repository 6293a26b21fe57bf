"""The contract of a model family, written out in full.

`ModelAdapter`: one diffusion model, frozen, seen through the few operations InvMM and the baselines need. Every
attribute the engine, the scorers, the cost model, the memory options and the LoRA loader read is declared here
with its default; a family's adapter sets what differs. Nobody reads an adapter through `getattr` fallbacks.

`Family`: what one family module declares for the registry (families/registry.py): how its folders are
recognised and loaded, its presets and check sampler, its LoRA format (or none) and its tiny pipeline for the
tests. A new family is one module with one `FAMILY` and its entry in `registry.FAMILIES`.

x0 lives in "model space": pixels in [-1, 1] for pixel models, scaled VAE latents for latent ones. Images going in
and out are float tensors [K, C, H, W] in [-1, 1]. `t` is what `sample_timesteps` draws: a training timestep
(DDPM-type families) or a training-sigma index (flow matching).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

# What a scorer may need beyond the base contract (`Scorer.requires`):
NOISE_SCHEDULE = "noise_schedule"  # a DDPM alpha_bar schedule: num_train_timesteps, alpha_bar, eps_prediction
TEXT = "text"  # text conditioning: prompt_embeddings, uncond_embeddings, soft prompts
CLASS = "class"  # class labels: prompt_embeddings(labels), uncond_embeddings, soft_class_conditioning
CAPABILITIES = (NOISE_SCHEDULE, TEXT, CLASS)
GUIDANCE_KINDS = ("cfg", "embedded", "none")
CHECK_PROMPT_DRAWS = ("shared", "per_sample")


class ModelAdapter:
    """The whole adapter contract. Class attributes say what kind of model it is; `__init__` of each family's
    adapter sets the instance attributes; the methods are the model's numerical path."""

    # --- what kind of model (class attributes of a family's adapter) ---
    family: ClassVar[str] = ""  # the family's name, which is also the name of its preset
    capabilities: ClassVar[frozenset[str]] = frozenset()  # a subset of CAPABILITIES
    conditional: ClassVar[bool] = False  # takes a text (TEXT) or a class label (CLASS)
    # How a guidance scale is applied, and so what it costs (cost.py): "cfg" u + s (c - u), an unconditional pass
    # for a scale other than 1; "embedded" the scale is a model input (Flux dev); "none" no guidance (Flux schnell).
    guidance_kind: str = "cfg"
    # A success check's soft prompt (or class): one Gumbel-softmax draw shared by its samples, or one per sample.
    check_prompt_draws: ClassVar[str] = "shared"
    # Without a caption (or class) the conditioning is inverted; False: the image needs one (PixArt).
    default_invert_prompt: ClassVar[bool] = True
    # The conditioning takes each image's original (width, height) (SDXL's size conditioning).
    size_conditioned: ClassVar[bool] = False
    # What the inversion takes of a KL VAE's posterior: one "sample" from the image's stream, or its "mode".
    vae_posterior: ClassVar[str] = "sample"

    # --- set by the adapter's __init__ ---
    device: torch.device
    source: str = ""  # the folder (or hub id) it was loaded from
    image_mode: str = "RGB"  # "L" or "RGB": what images are converted to before encoding
    image_size: int  # images are resized/center-cropped to this square side
    native_resolution: int  # the side the model was built for
    denoiser: torch.nn.Module  # the UNet or transformer: what the optimisation and the checks call
    codec: object  # images <-> model space: codecs.PixelCodec or codecs.VAECodec
    vae: torch.nn.Module | None = None  # the codec's VAE
    text_encoders: tuple = ()  # every text encoder, in the pipeline's order (None for an absent optional one)
    tokenizers: tuple = ()  # their tokenizers
    loras: tuple = ()  # what families.lora loaded onto the model: {"path", "sha256", "scale"} each
    # the inference-time mitigations it generates under (invmm.mitigations): {"name", its settings...} each
    mitigations: tuple = ()
    num_train_timesteps: int | None = None  # the DDPM schedule's length (capability NOISE_SCHEDULE)

    @property
    def preset(self) -> str:
        """The preset the model is measured with by default: its family's (Flux schnell names another)."""
        return self.family

    # --- the numerical path every family has ---
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """One x0's [C, H, W] at image_size."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError

    def guided_output(self, x: torch.Tensor, t, cond=None, guidance: float | list[float] = 1.0) -> torch.Tensor:
        """The raw model output a sampler steps with, at one guidance scale or one per row (the success check
        batches images at different scales; rows at scale 1 take no unconditional pass)."""
        raise NotImplementedError

    def unconditional_rows(self, cond, n: int):
        """The unconditional conditioning that guides n rows of `cond` (a family may keep a row's own extras, as
        SDXL keeps its size conditioning); what every guided step and inference-time mitigation uses."""
        return self.uncond_embeddings(n)

    def guidance_pair(self, x: torch.Tensor, t, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional and conditional raw outputs (u, c) a classifier-free guided step combines, in one
        batched call: what a mitigation acting on the guidance reads (families with guidance_kind "cfg")."""
        raise NotImplementedError

    def sampler(self, steps: int, schedule: str = "model"):
        """A diffusers scheduler of the check, its timesteps set."""
        raise NotImplementedError

    def check_timesteps(self, steps: int, schedule: str = "model") -> list:
        raise NotImplementedError

    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond=None,
                 guidance: float | list[float] = 1.0, generator=None, schedule: str = "model") -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """What run.json records of the model (JSON)."""
        raise NotImplementedError

    # --- capability NOISE_SCHEDULE ---
    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eps_prediction(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError

    # --- capabilities TEXT and CLASS: a conditioning is a tensor or a tuple of tensors, batch first ---
    def prompt_embeddings(self, given: list, **size):
        """The conditioning of per-image captions (TEXT) or classes (CLASS)."""
        raise NotImplementedError

    def uncond_embeddings(self, n: int):
        raise NotImplementedError


@dataclass(frozen=True)
class ModelFolder:
    """What detection reads of a model folder: the component configs, once."""

    root: Path
    listing: str  # the folder's entries, for messages
    scheduler_config: dict
    unet: dict | None  # unet/config.json
    transformer: dict | None  # transformer/config.json
    index: dict  # model_index.json, or {}

    def has(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def has_config(self, name: str) -> bool:
        return (self.root / name / "config.json").exists()


@dataclass(frozen=True)
class LoraFormat:
    """How a family's LoRA files load and save (through the library that defines the format)."""

    # (components, weights file, adapter name) -> the number of LoRA tensors the file holds
    load: Callable[[dict, Path, str], int]
    # (components, out folder, {component: its peft LoRA state}, adapter name) -> the weights file written
    save: Callable[[dict, Path, dict, str], Path]


@dataclass(frozen=True)
class Family:
    name: str  # = the name of its preset
    folder: str  # what its folders hold, for messages
    detect: Callable[[ModelFolder], bool]
    # (folder, *, device, allow_pickle, source, resolution, latent_scale) -> its adapter
    load: Callable[..., ModelAdapter]
    presets: dict[str, dict]  # preset name -> the InvMMConfig values it sets (its own name first)
    sampler: str  # "ddim" or "euler": the check sampler its models take
    lora: LoraFormat | None  # None: --lora is refused (merge the LoRA into the weights instead)
    tiny: Callable[..., Path]  # tiny(path, **variant): the family's tiny pipeline, built from config
    tiny_variants: dict[str, dict] = field(default_factory=dict)  # test name -> tiny's arguments
