"""Per-image files of a run: the fitted distribution and a picture of the last check."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from invmm.functional import MAP_THRESHOLD, to_uint8
from invmm.store.files import atomic_write_bytes


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


# run.json's "artifact_names": how the run names its per-image files. Absent: the first scheme (safe_name of the id
# without its suffix), under which cat.png and cat.jpg, or a/cat.png and a_cat.png, wrote the same files.
ARTIFACT_NAMES = 2
ARTIFACT_SUFFIXES = (".safetensors", ".png", ".map.png")


def artifact_stem(run_dir: Path, image_id: str, repeat: int = 0) -> Path:
    """Where an image's files live in a run folder, without suffix (add .safetensors / .png). The readable part
    is the id made safe, the rest a hash of the exact id, so two ids never share files (ids that differ only in
    suffix, separator or case included, on case-insensitive file systems too). Repeat r > 0 adds ".rR"."""
    digest = hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(safe_name(image_id)).stem)[:100]  # no dot: no suffix
    stem = Path(run_dir) / "images" / f"{readable}_{digest}"
    return stem.with_name(stem.name + f".r{repeat}") if repeat else stem


def legacy_stem(run_dir: Path, image_id: str, repeat: int = 0) -> Path:
    """Where a run written before ARTIFACT_NAMES kept an image's files (not injective)."""
    stem = (Path(run_dir) / "images" / safe_name(image_id)).with_suffix("")
    return stem.with_name(stem.name + f".r{repeat}") if repeat else stem


def artifact_stems(run_dir: Path, info: dict, keys) -> dict:
    """(id, repeat) -> the stem of that inversion's files in a run folder, for readers (report, merge): the
    run's own scheme, and for a run written before ARTIFACT_NAMES the old names, except where two inversions
    shared them (their files may be either's: None)."""
    keys = list(keys)
    if info.get("artifact_names") == ARTIFACT_NAMES:
        return {k: artifact_stem(run_dir, *k) for k in keys}
    shared = _shared_legacy(run_dir, keys)
    return {k: None if k in shared else legacy_stem(run_dir, *k) for k in keys}


def _shared_legacy(run_dir: Path, keys) -> set:
    by_stem: dict[Path, list] = {}
    for k in keys:
        by_stem.setdefault(legacy_stem(run_dir, *k), []).append(k)
    return {k for ks in by_stem.values() if len(ks) > 1 for k in ks}


def legacy_problems(run_dir: Path, info: dict, keys) -> list[str]:
    """Why a run written before ARTIFACT_NAMES cannot be carried over to the new names: inversions that shared
    files (which image those files show cannot be told)."""
    if info.get("artifact_names") == ARTIFACT_NAMES:
        return []
    by_stem: dict[Path, list] = {}
    for k in set(keys):
        by_stem.setdefault(legacy_stem(run_dir, *k), []).append(k)
    shared = sorted((stem, sorted(ks)) for stem, ks in by_stem.items() if len(ks) > 1
                    and any(Path(f"{stem}{s}").exists() for s in ARTIFACT_SUFFIXES))
    return [f"its images {' and '.join(repr(i) for i, _ in ks)} wrote the same files ({stem.name}.*, a run made "
            "before per-image file names were unique), so which image they show cannot be told; start over in a "
            "new folder (--force-new), or delete those files to resume without them" for stem, ks in shared[:3]]


def migrate_legacy(run_dir: Path, keys) -> int:
    """Rename a pre-ARTIFACT_NAMES run's files to the injective names (each rename atomic, so an interrupted
    migration is finished by the next); legacy_problems must be empty. Returns the files moved."""
    moved = 0
    for k in set(keys):
        for suffix in ARTIFACT_SUFFIXES:
            old = Path(f"{legacy_stem(run_dir, *k)}{suffix}")
            new = Path(f"{artifact_stem(run_dir, *k)}{suffix}")
            if old.is_file() and not new.exists():
                os.replace(old, new)
                moved += 1
    return moved


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


def copy_artifacts(src_run: Path, dst_run: Path, image_id: str, repeat: int = 0, src_stem: Path | None = None) -> None:
    """An inversion's files from one run folder into another (merge, --mask auto), those that exist; `src_stem`:
    where they lie in `src_run` when not under its own names (artifact_stems of an older run)."""
    import shutil

    src_stem = src_stem or artifact_stem(src_run, image_id, repeat)
    for suffix in ARTIFACT_SUFFIXES:
        a = Path(f"{src_stem}{suffix}")
        if a.is_file():
            b = Path(f"{artifact_stem(dst_run, image_id, repeat)}{suffix}")
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(a, b)
