"""Image files -> model-ready tensors, with a clear error for each way a file can be unusable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invmm.data.containers import ContainerError, describe_ref, open_image_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageItem:
    """One input image: its stable id and where it came from. `pixels` is set once it loaded."""

    id: str
    path: str
    caption: str | None = None
    label: str | None = None
    class_label: str | None = None  # class-conditional models: the image's class (index or name)
    ref: str | None = None  # where in `path` the image lies: a tar member, a parquet or Arrow row (containers.py)
    meta: dict | None = None  # a shard's or dataset row's other fields (url, sizes, ...), kept with the result
    mask: str | None = None  # partial memorization: the mask file (data/masks.py)
    mask_source: str | None = None  # where it came from: "option" (--mask), "manifest" (a mask column), "auto"
    mask_sha256: str | None = None
    pixels: torch.Tensor | None = None  # [C, S, S] in [-1, 1]
    original_size: tuple[int, int] | None = None
    resized: bool = False
    error: str | None = None

    @property
    def origin(self) -> str:
        """Where the image lies, as error messages name it: the file, or the shard and member (the row)."""
        return describe_ref(self.path, self.ref)


class _Unsupported(Exception):
    pass


def collect_images(inputs: list[str]) -> list[ImageItem]:
    """Expand files and folders into items with ids; a missing path becomes an item with an error.

    A folder is walked recursively for image suffixes and ids are paths relative to it, so the same
    dataset gives the same ids wherever it lies.
    """
    items: list[ImageItem] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                items.append(ImageItem(id=str(p), path=str(p), error=f"{p}: folder holds no image files"))
            for f in files:
                items.append(ImageItem(id=f.relative_to(p).as_posix(), path=str(f)))
        elif p.exists():
            items.append(ImageItem(id=p.name, path=str(p)))
        else:
            items.append(ImageItem(id=str(p), path=str(p), error=f"{p}: no such file or folder"))
    seen: dict[str, int] = {}
    for it in items:
        # Two inputs with the same name (a/x.png, b/x.png) must not share an id: ids key results and seeds.
        if it.id in seen:
            seen[it.id] += 1
            it.id = f"{it.id}#{seen[it.id]}"
        else:
            seen[it.id] = 0
    return items


def _unreadable(exc: Exception) -> str:
    """Why an image file cannot be used, in words, by the exception that decoding it raised (most specific first:
    FileNotFoundError and UnidentifiedImageError are OSErrors)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, _Unsupported):
        return f"the model cannot take this image: {exc}"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, ContainerError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (or a format Pillow cannot read)"
    if isinstance(exc, Image.DecompressionBombError):
        # Not an OSError: left alone it would end the whole audit for one oversized file.
        return (f"the image is too large to decode safely ({exc}); resize it, or raise PIL.Image.MAX_IMAGE_PIXELS "
                "if the file is trusted")
    return f"corrupt or unreadable image ({exc})"


def load_image(item: ImageItem, *, mode: str, size: int) -> ImageItem:
    """Decode, convert to the model's mode, resize the short side and center-crop to size x size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if item.error:
        return item
    where = item.origin
    try:
        with Image.open(open_image_bytes(item.path, item.ref)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            w, h = im.size
            if w < 1 or h < 1:
                raise ValueError(f"empty image ({w}x{h})")
            if im.mode in ("I", "F") or im.mode.startswith("I;"):
                # Pillow would clip these to 8 bits silently; the user must choose the mapping.
                raise _Unsupported(
                    f"{im.mode} ({'16/32-bit integer' if im.mode != 'F' else 'float'}) pixels; the model takes "
                    "8-bit images: convert it to 8-bit L or RGB first"
                )
            if im.mode in ("RGBA", "LA", "P", "PA"):
                # Composite transparency onto white rather than letting it turn black.
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert(mode)
    except (_Unsupported, FileNotFoundError, ContainerError, UnidentifiedImageError, Image.DecompressionBombError,
            OSError, SyntaxError, ValueError) as exc:
        item.error = f"{where}: {_unreadable(exc)}"
        return item
    item.original_size = (w, h)
    if (w, h) != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
        item.resized = True
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    item.pixels = torch.from_numpy(np.ascontiguousarray(arr))
    return item
