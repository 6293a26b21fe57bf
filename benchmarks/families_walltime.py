"""Wall time per image of each family's tiny pipeline on this machine (the numerical paths, not real models).

Builds each tiny pipeline from config (invmm.zoo.tiny), measures one 16x16 image with the family's
preset at a 100-step budget (checks at their preset intervals, all guidance scales tried, similarity
pixel: the tiny models never succeed, so every check runs round 1 at every scale), and prints seconds per
image. Conditional families run with a known caption (or class) and with inversion.

    python benchmarks/families_walltime.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from invmm import measure
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.runs.measure import default_config
from invmm.zoo.tiny import (
    build_tiny_dit,
    build_tiny_flux,
    build_tiny_ldm,
    build_tiny_pixart,
    build_tiny_pixel,
    build_tiny_sd,
    build_tiny_sd3,
    build_tiny_sdxl,
)

CASES = [  # name, builder, caption, class
    ("pixel DDPM (UNet2DModel)", lambda p: build_tiny_pixel(p, channels=3, size=16), None, None),
    ("latent diffusion (VAE + UNet2DModel)", build_tiny_ldm, None, None),
    ("Stable Diffusion, known caption", build_tiny_sd, "a red square", None),
    ("Stable Diffusion, prompt inversion", build_tiny_sd, None, None),
    ("SD3 flow matching, known caption (no T5)", build_tiny_sd3, "a red square", None),
    ("SD3 flow matching, CLIP-L prompt inversion (no T5)", build_tiny_sd3, None, None),
    ("SDXL, known caption", build_tiny_sdxl, "a red square", None),
    ("SDXL, prompt inversion", build_tiny_sdxl, None, None),
    ("Flux dev, known caption", build_tiny_flux, "a red square", None),
    ("Flux dev, CLIP-L prompt inversion", build_tiny_flux, None, None),
    ("Flux schnell, known caption", lambda p: build_tiny_flux(p, guidance_embeds=False), "a red square", None),
    ("PixArt-alpha, known caption", build_tiny_pixart, "a red square", None),
    ("PixArt-Sigma, known caption", lambda p: build_tiny_pixart(p, sigma=True), "a red square", None),
    ("PixArt-alpha, T5 prompt inversion", build_tiny_pixart, None, None),
    ("DiT (class-conditional), known class", build_tiny_dit, None, "1"),
    ("DiT (class-conditional), class inversion", build_tiny_dit, None, None),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp / "red.png")
        print("| family (tiny pipeline) | preset | steps | checks x scales | s / image |\n|---|---|---|---|---|")
        for i, (name, build, caption, label) in enumerate(CASES):
            model = build(tmp / f"m{i}")
            adapter = load_adapter(str(model))
            cfg = default_config(adapter, similarity="pixel", max_steps=args.max_steps)
            # The tiny DDPM-family models have 100 training timesteps: DDIM cannot take more steps.
            cfg = cfg.replace(sampler_steps=min(cfg.sampler_steps, getattr(adapter, "num_train_timesteps", 10**9)))
            if adapter.conditional and caption is None and label is None:
                cfg = cfg.replace(invert_prompt=True)  # PixArt inverts only when asked
            t0 = time.perf_counter()
            (r,) = measure(adapter, [ImageItem(id="red", path=str(tmp / "red.png"), caption=caption,
                                                class_label=label)], cfg)
            dt = time.perf_counter() - t0
            scales = len(cfg.guidance_scales) if getattr(adapter, "conditional", False) else 1
            print(f"| {name} | {cfg.preset} | {r.steps} | {len(r.checks)} x {scales} | {dt:.1f} |", flush=True)


if __name__ == "__main__":
    main()
