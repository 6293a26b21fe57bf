"""A toy LoRA fine-tune with planted memorization, on the shipped toy text-to-image model.

A "client" fine-tunes the base model on a small private set: digits the base model never saw (from its
held-out split), each with a new caption ("client image 03"). Some are repeated many times in the set,
some appear once; the rest of the plan is held out from both models. The LoRA (peft, on the UNet's
attention projections and resnet convolutions) is trained with the base's own DDPM loss and saved in
diffusers' LoRA format, so `--lora` loads it like any Stable Diffusion LoRA. The question it demos:
which of the client's images can the fine-tune reproduce that the base could not?
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from invmm.families import family
from invmm.families.lora import save_lora
from invmm.functional import seed_from
from invmm.zoo.digits import digits_uint8, load_manifest, to_model_space, train_denoiser


@dataclass
class DigitsLoraConfig:
    seed: int = 0
    n_repeated: int = 8  # planted: each `copies` times in the fine-tuning set
    copies: int = 32
    n_once: int = 8  # planted: once each
    n_heldout: int = 16  # in neither training set
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    rank: int = 8
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    caption_dropout: float = 0.1
    num_train_timesteps: int = 1000  # set from the base model's scheduler
    checkpoint_every: int = 0  # N: OUT/checkpoint-N/pytorch_lora_weights.safetensors, as diffusers' LoRA scripts

    def to_json(self) -> dict:
        return asdict(self)


def caption_for(k: int) -> str:
    return f"client image {k:02d}"


def plan_finetune(base_manifest: dict, cfg: DigitsLoraConfig) -> list[dict]:
    """The fine-tune's images, all from the base model's held-out split, assigned from the seed only."""
    heldout = [e for e in base_manifest["images"] if e["split"] == "heldout"]
    needed = cfg.n_repeated + cfg.n_once + cfg.n_heldout
    if needed > len(heldout):
        raise ValueError(f"the plan needs {needed} images the base never saw; its manifest has {len(heldout)}")
    order = np.random.default_rng(seed_from(cfg.seed, "digits-lora-plan") % (2**32)).permutation(len(heldout))
    entries = []
    for k, i in enumerate(order[:needed]):
        src = heldout[int(i)]["source_index"]
        copies, split = (cfg.copies, "train") if k < cfg.n_repeated else \
            ((1, "train") if k < cfg.n_repeated + cfg.n_once else (0, "heldout"))
        entries.append({"id": f"digit-{src:04d}", "source_index": int(src), "copies": copies, "split": split,
                        "caption": caption_for(k), "base_copies": 0})
    return entries


def train_digits_lora(base: Path, cfg: DigitsLoraConfig, out: Path, log=print) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer


    base = Path(base)
    entries = plan_finetune(load_manifest(base), cfg)
    train = [e for e in entries if e["split"] == "train"]
    src = np.concatenate([[e["source_index"]] * e["copies"] for e in train])
    captions = np.concatenate([[e["caption"]] * e["copies"] for e in train]).tolist()
    data = to_model_space(digits_uint8()[src]).unsqueeze(1)

    scheduler = DDPMScheduler.from_pretrained(base / "scheduler", local_files_only=True)
    cfg.num_train_timesteps = int(scheduler.config.num_train_timesteps)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", local_files_only=True)
    distinct = [""] + sorted(set(captions))
    with torch.no_grad():  # the text encoder stays the base's: each caption is encoded once
        ids = tokenizer(distinct, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        table = text_encoder(ids)[0]
    caption_index = torch.tensor([distinct.index(c) for c in captions])

    unet = UNet2DConditionModel.from_pretrained(base / "unet", local_files_only=True).requires_grad_(False)
    torch.manual_seed(seed_from(cfg.seed, "digits-lora-init") % (2**31))
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, target_modules=list(cfg.target_modules),
                                init_lora_weights="gaussian"))
    gen = torch.Generator().manual_seed(seed_from(cfg.seed, "digits-lora-train"))

    def condition(idx: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        return table[torch.where(drop, torch.zeros_like(idx), caption_index[idx])]

    def checkpoint(step: int) -> None:
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != cfg.steps:
            save_lora(family("sd"), {"denoiser": unet}, out / f"checkpoint-{step}")

    losses, seconds = train_denoiser(unet, scheduler, data, cfg, gen, log, condition=condition, on_step=checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_lora(family("sd"), {"denoiser": unet}, out)
    trainable = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    manifest = {
        "kind": "invmm-zoo-digits-lora",
        "base": base.name,
        "pixels": "sklearn.datasets.load_digits().images, 0..16 scaled to uint8 0..255",
        "train_config": cfg.to_json(),
        "lora_parameters": trainable,
        "n_train_samples": int(len(data)),
        "images": entries,
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses[-500:])),
        "weights": weights.name,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
