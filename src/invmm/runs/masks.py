"""Masks for partial memorization: which region of an image the check compares (binary or soft, in [0, 1]).

A mask is an image file of the target's own size (a grayscale PNG: 0 outside the region, 255 inside, values
between for a soft edge) and is cropped and resized exactly as its image is (short side to the model's size,
centre crop), so the same pixels are masked in the model's frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from invmm.errors import InvMMInputError


def load_mask(path: str | Path, *, size: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The mask at `path` as a [1, size, size] tensor in [0, 1]. `image_size` (w, h): the original size of the
    image it masks; a mask of another size is refused, as is an unreadable file or an empty mask."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA"):  # a transparent overlay: opaque = inside the region
                im = im.getchannel("A")
            im = im.convert("L")
    except FileNotFoundError:
        raise InvMMInputError(f"{p}: no such mask file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvMMInputError(f"{p}: not a readable mask image ({exc}); give a grayscale PNG, 0 outside the "
                              "region and 255 inside") from None
    if image_size is not None and tuple(im.size) != tuple(image_size):
        raise InvMMInputError(f"{p}: the mask is {im.size[0]}x{im.size[1]}, its image {image_size[0]}x"
                              f"{image_size[1]}; a mask must have its image's size")
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    mask = torch.from_numpy(np.clip(np.asarray(im, dtype=np.float32) / 255.0, 0.0, 1.0))[None]
    if not bool((mask > 0).any()):
        raise InvMMInputError(f"{p}: the mask is empty (no pixel above 0 at {size}x{size}); it must mark the region "
                              "to compare")
    return mask


def masked_fraction(mask: torch.Tensor) -> float:
    """The share of the image the mask weighs (a soft mask counts its weights)."""
    return float(mask.double().mean())
