"""Toy text-to-image DDPM on the 8x8 digits: captions like "a handwritten seven", planted duplicated pairs.

Same image plan as the unconditional toy (digits.py: duplication levels and held-out split from the
seed); each image's caption names its digit. A tiny CLIP text encoder (random, frozen) and the
byte-level CLIP tokenizer condition a pixel-space `UNet2DConditionModel` through cross-attention;
captions are dropped 10% of the time so classifier-free guidance works. The folder has the Stable
Diffusion layout minus the VAE (the model runs in pixel space).
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
from invmm.zoo.tokenizer import build_clip_tokenizer

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def caption_for(label: int) -> str:
    return f"a handwritten {WORDS[label]}"


@dataclass
class DigitsT2IConfig(DigitsTrainConfig):
    steps: int = 7000
    caption_dropout: float = 0.1
    text_hidden: int = 32
    max_length: int = 24


def digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def build_text_encoder(cfg: DigitsT2IConfig, vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed_from(cfg.seed, "digits-t2i-text-encoder") % (2**31))
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=cfg.max_length,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    ))


def build_unet(cfg: DigitsT2IConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8, norm_num_groups=8,
    )


def train_digits_t2i(cfg: DigitsT2IConfig, out: Path, log=print) -> dict:
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed)
    entries = plan_dataset(cfg)
    labels = digit_labels()
    for e in entries:
        e["caption"] = caption_for(int(labels[e["source_index"]]))
    train_src = training_sources(entries)
    data = to_model_space(digits_uint8()[train_src]).unsqueeze(1)
    captions = [caption_for(int(labels[s])) for s in train_src]

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(model_max_length=cfg.max_length)
    vocab = tokenizer.get_vocab()
    text_encoder = build_text_encoder(cfg, len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]).eval()
    # The encoder is frozen, so each distinct caption is encoded once.
    distinct = [""] + sorted(set(captions))
    with torch.no_grad():
        ids = tokenizer(distinct, padding="max_length", max_length=cfg.max_length, truncation=True,
                        return_tensors="pt").input_ids
        table = text_encoder(ids)[0]
    caption_index = torch.tensor([distinct.index(c) for c in captions])

    unet = build_unet(cfg)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type="epsilon", clip_sample=True)
    gen = torch.Generator().manual_seed(seed_from(cfg.seed, "digits-t2i-train"))

    def condition(idx: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        return table[torch.where(drop, torch.zeros_like(idx), caption_index[idx])]

    losses, seconds = train_denoiser(unet, scheduler, data, cfg, gen, log, condition=condition,
                                     on_step=denoiser_checkpoints(unet, out, cfg.checkpoint_every, cfg.steps))
    for name, comp in (("unet", unet), ("text_encoder", text_encoder), ("tokenizer", tokenizer),
                       ("scheduler", scheduler)):
        comp.save_pretrained(out / name)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }, indent=1) + "\n")
    return write_trained_manifest(out, "invmm-zoo-digits-t2i", cfg, entries, len(data), losses, seconds)
