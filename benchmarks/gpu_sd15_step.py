"""Peak GPU memory, seconds per 100 InvMM optimisation steps and seconds per success check for an SD-1.5-sized
model (random weights).

The UNet, text encoder and VAE are built from Stable Diffusion 1.5's published configs (no weights
needed: cost does not depend on the values), at 64x64 latents (512 px images), B = 16, prompt inversion
over the full 49,408-token vocabulary, so the measured step is the real one. Checks are pushed past the
budget so only optimisation is timed. Then one check of the sd preset (7 guidance scales, DDIM 50) is
timed twice on the fitted state: failing at its first round (one sample per scale: what most checks of an
unmemorized image cost) and generating all 8 samples at every scale (the most a check can cost).
`--tiny` runs the same script at toy size on a CPU (a dry run).

    python benchmarks/gpu_sd15_step.py --device cuda [--precision bf16] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from invmm.analysis.estimate import probe_seconds
from invmm.config import preset
from invmm.families.sd import SDAdapter
from invmm.inversion import Inverter, Target
from invmm.similarity import PixelSimilarity
from invmm.zoo.tokenizer import build_clip_tokenizer

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                scaling_factor=0.18215)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77)
TINY_VAE = dict(block_out_channels=(16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_clip_tokenizer()
    vocab = tok.get_vocab()
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if args.tiny else SD15_UNET))
    text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if args.tiny else SD15_TEXT), **special))
    vae = AutoencoderKL(**(TINY_VAE if args.tiny else SD15_VAE))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    adapter = SDAdapter(unet, vae, text, tok, dict(sched.config), device=args.device)
    cfg = preset("sd", similarity="pixel", max_steps=args.steps, check_every=10 * args.steps,
                 batch_size=args.batch_size, precision=args.precision,
                 gradient_checkpointing=args.gradient_checkpointing)
    target = Target(id="random", pixels=torch.rand(3, adapter.image_size, adapter.image_size) * 2 - 1)
    inverter = Inverter(adapter, cfg, PixelSimilarity(), batch_images=1)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    (out,) = inverter.run([target])
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    check_s = {}
    # The first check pays one-time costs (allocations, kernel selection): a warm-up check is not timed.
    for name, rounds in (("warm-up", [1, 4]), ("first_round", [1, 4]), ("all_samples", [])):
        probe = probe_seconds(adapter, cfg.replace(check_rounds=rounds), PixelSimilarity(), target.pixels,
                              batch_images=1, steps=1)
        check_s[name] = probe["check_s"]
    summary = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "unet_params_M": sum(p.numel() for p in unet.parameters()) / 1e6, "image_size": adapter.image_size,
        "batch_size": args.batch_size, "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing, "steps": out.result.steps,
        "s_per_100_steps": dt / out.result.steps * 100, "peak_gpu_gib": peak, "prompt_mode": out.result.prompt_mode,
        "s_per_check_failing_first_round": check_s["first_round"], "s_per_check_all_samples": check_s["all_samples"],
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
