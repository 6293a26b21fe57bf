"""Per-image files of a run: the fitted distribution and a picture of the last check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from invmm.functional import to_uint8
from invmm.runs.files import atomic_write_bytes


def safe_name(image_id: str) -> str:
    """An id made safe as a file name (ids come from user paths)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"
    return name[:120]


def save_distribution(path: Path, mu: torch.Tensor, logvar: torch.Tensor, metadata: dict) -> None:
    from safetensors.torch import save

    data = save({"mu": mu.contiguous(), "logvar": logvar.contiguous()}, metadata={k: str(v) for k, v in
                                                                                 metadata.items()})
    atomic_write_bytes(path, data)


def grid_png(target: torch.Tensor, samples: torch.Tensor | None, min_px: int = 64) -> bytes:
    """Target, then the check samples, side by side with a gap; tiny images are upscaled (nearest)."""
    import io

    from PIL import Image

    tiles = [target[None]] + ([samples] if samples is not None else [])
    arr = to_uint8(torch.cat([t.cpu() for t in tiles]))
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    n, h, w, _ = arr.shape
    scale = max(1, -(-min_px // h))
    gap = 2 * scale
    canvas = np.full((h * scale, n * w * scale + (n - 1) * gap, 3), 255, np.uint8)
    for i, a in enumerate(arr):
        big = a.repeat(scale, 0).repeat(scale, 1)
        x = i * (w * scale + gap)
        canvas[:, x : x + w * scale] = big
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def artifact_stem(run_dir: Path, image_id: str, repeat: int = 0) -> Path:
    """Where an image's files live in a run folder, without suffix (add .safetensors / .png). Repeat 0 keeps
    the name a run without repeats has always used; repeat r > 0 adds ".rR"."""
    stem = (Path(run_dir) / "images" / safe_name(image_id)).with_suffix("")
    return stem.with_name(stem.name + f".r{repeat}") if repeat else stem


def write_image_artifacts(run_dir: Path, image_id: str, pixels: torch.Tensor, outcome, repeat: int = 0) -> None:
    """The fitted distribution and the target beside the last check's samples; each file is complete or absent."""
    stem = artifact_stem(run_dir, image_id, repeat)
    res = outcome.result
    save_distribution(Path(f"{stem}.safetensors"), outcome.mu, outcome.logvar,
                      {"id": image_id, "repeat": repeat, "score": res.score, "steps": res.steps})
    atomic_write_bytes(Path(f"{stem}.png"), grid_png(pixels, outcome.samples))
