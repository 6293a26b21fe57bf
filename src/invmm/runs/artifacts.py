"""Per-image files of a run: the fitted distribution and a picture of the last check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from invmm.functional import MAP_THRESHOLD, to_uint8
from invmm.runs.files import atomic_write_bytes


def safe_name(image_id: str) -> str:
    """An id made safe as a file name (ids come from user paths)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image"
    return name[:120]


def save_distribution(path: Path, mu: torch.Tensor, logvar: torch.Tensor, metadata: dict,
                      memorization_map: torch.Tensor | None = None) -> None:
    from safetensors.torch import save

    tensors = {"mu": mu.contiguous(), "logvar": logvar.contiguous()}
    if memorization_map is not None:
        tensors["map"] = memorization_map.float().contiguous()
    data = save(tensors, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, data)


def load_map(path: Path) -> torch.Tensor | None:
    """The memorization map an image's .safetensors holds (None if it holds none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("map") if "map" in f.keys() else None


def map_png(target: torch.Tensor, memorization_map: torch.Tensor, threshold: float, min_px: int = 64) -> bytes:
    """The target, its memorization map (black: not reproduced beyond the prior, white: by every sample) and the
    target with the pixels at or above `threshold` tinted red, side by side; tiny images upscaled (nearest)."""
    import io

    from PIL import Image

    t = to_uint8(target[None].cpu())[0]
    t = np.repeat(t, 3, axis=-1) if t.shape[-1] == 1 else t
    m = memorization_map.detach().float().cpu().clamp(0, 1).numpy()
    heat = np.repeat(np.round(m * 255).astype(np.uint8)[..., None], 3, axis=-1)
    tint = t.astype(np.float32)
    on = m >= threshold
    tint[on] = 0.45 * tint[on] + 0.55 * np.array([255.0, 0.0, 0.0])
    tiles = [t, heat, np.round(tint).astype(np.uint8)]
    h, w, _ = t.shape
    scale = max(1, -(-min_px // h))
    gap = 2 * scale
    canvas = np.full((h * scale, 3 * w * scale + 2 * gap, 3), 255, np.uint8)
    for i, a in enumerate(tiles):
        x = i * (w * scale + gap)
        canvas[:, x : x + w * scale] = a.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


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
    """The fitted distribution (and the memorization map), the target beside the last check's samples and the map's
    picture; each file is complete or absent."""
    stem = artifact_stem(run_dir, image_id, repeat)
    res = outcome.result
    save_distribution(Path(f"{stem}.safetensors"), outcome.mu, outcome.logvar,
                      {"id": image_id, "repeat": repeat, "score": res.score, "steps": res.steps},
                      memorization_map=outcome.map)
    atomic_write_bytes(Path(f"{stem}.png"), grid_png(pixels, outcome.samples))
    if outcome.map is not None:
        atomic_write_bytes(Path(f"{stem}.map.png"), map_png(pixels, outcome.map, MAP_THRESHOLD))


ARTIFACT_SUFFIXES = (".safetensors", ".png", ".map.png")


def copy_artifacts(src_run: Path, dst_run: Path, image_id: str, repeat: int = 0) -> None:
    """An inversion's files from one run folder into another (merge, --mask auto), those that exist."""
    import shutil

    for suffix in ARTIFACT_SUFFIXES:
        a = Path(f"{artifact_stem(src_run, image_id, repeat)}{suffix}")
        if a.is_file():
            b = Path(f"{artifact_stem(dst_run, image_id, repeat)}{suffix}")
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
