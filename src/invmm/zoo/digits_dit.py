"""Toy class-conditional DiT on the 8x8 digits: the class is the digit, planted duplicated images.

Same image plan as the unconditional toy (digits.py: duplication levels and held-out split from the seed).
A small `DiTTransformer2DModel` runs in pixel space (patch 2, 16 tokens) with a learned-variance output, as
ImageNet DiT-XL/2 has; only its eps channels are trained. DiT's label embedding drops the class 10% of the
time during training (its own class dropout), so the null class (index 10) supports classifier-free
guidance. The folder has the DiTPipeline layout minus the VAE, with `id2label` naming the digits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invmm.functional import seed_from
from invmm.zoo.digits import (
    DigitsTrainConfig,
    denoiser_checkpoints,
    digits_uint8,
    plan_dataset,
    to_model_space,
    train_denoiser,
    training_sources,
    write_trained_manifest,
)
from invmm.zoo.digits_t2i import WORDS, digit_labels


@dataclass
class DigitsDiTConfig(DigitsTrainConfig):
    steps: int = 8000
    lr: float = 5e-4
    warmup_steps: int = 500
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32


def build_dit(cfg: DigitsDiTConfig):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim, in_channels=1,
        out_channels=2, num_layers=cfg.num_layers, sample_size=8, patch_size=2, num_embeds_ada_norm=len(WORDS),
        norm_num_groups=1,
    )


def train_digits_dit(cfg: DigitsDiTConfig, out: Path, log=print) -> dict:
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed)  # DiT's label dropout draws from the global stream
    entries = plan_dataset(cfg)
    labels = digit_labels()
    for e in entries:
        e["class"] = int(labels[e["source_index"]])
    train_src = training_sources(entries)
    data = to_model_space(digits_uint8()[train_src]).unsqueeze(1)
    classes = torch.from_numpy(labels[train_src].astype(np.int64))

    model = build_dit(cfg)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type="epsilon", clip_sample=True)
    gen = torch.Generator().manual_seed(seed_from(cfg.seed, "digits-dit-train"))
    losses, seconds = train_denoiser(model, scheduler, data, cfg, gen, log, condition=lambda idx: classes[idx],
                                     on_step=denoiser_checkpoints(model, out, cfg.checkpoint_every, cfg.steps,
                                                                  "transformer"))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "transformer")
    scheduler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"], "id2label": {str(i): w for i, w in enumerate(WORDS)},
    }, indent=1) + "\n")
    return write_trained_manifest(out, "invmm-zoo-digits-dit", cfg, entries, len(data), losses, seconds)
