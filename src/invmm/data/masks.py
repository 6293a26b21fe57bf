"""Masks for partial memorization: which region of an image the check compares (binary or soft, in [0, 1]).

A mask is an image file of the target's own size (a grayscale PNG: 0 outside the region, 255 inside, values
between for a soft edge) and is cropped and resized exactly as its image is (short side to the model's size,
centre crop), so the same pixels are masked in the model's frame.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from invmm.errors import InvMMInputError
from invmm.store.hashing import sha256_file


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
    except Image.DecompressionBombError as exc:
        raise InvMMInputError(f"{p}: the mask is too large to decode safely ({exc}); give a mask of its image's "
                              "size") from None
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


def attach_masks(items: list, mask: str | Path | None) -> None:
    """`--mask PATH`: every item is masked by PATH. A dataset whose manifest names masks already is refused (two
    sources of one mask would leave it unclear which was measured)."""
    if mask is None:
        return
    named = [it for it in items if it.mask]
    if named:
        raise InvMMInputError(f"--mask {mask}: the dataset's manifest names masks already (first: {named[0].mask} for "
                              f"{named[0].id}); give --mask or a manifest 'mask' column, not both")
    for it in items:
        it.mask, it.mask_source = str(mask), "option"


def hash_masks(items: list) -> dict | None:
    """Hash every item's mask file (each file once) into the item; returns what run.json records of the masks
    (None without masks), so that a resumed run can refuse masks that changed. A mask file that is missing is
    an input error of its item, naming the file."""
    masked = [it for it in items if it.mask and not it.error]
    if not masked:
        return None
    digests: dict[str, str] = {}  # each file hashed once
    problems: dict[str, str] = {}
    for it in masked:
        if it.mask not in digests and it.mask not in problems:
            try:
                digests[it.mask] = sha256_file(it.mask)
            except FileNotFoundError:
                problems[it.mask] = "no such mask file"
            except OSError as exc:
                problems[it.mask] = f"cannot read the mask ({exc})"
        if it.mask in problems:
            it.error = f"{it.mask}: {problems[it.mask]} (the mask of {it.origin})"
        else:
            it.mask_sha256 = digests[it.mask]
    masked = [it for it in masked if not it.error]
    if not masked:
        return None
    sources = sorted({it.mask_source for it in masked})
    if sources == ["option"]:
        return {"source": "option", "path": masked[0].mask, "sha256": masked[0].mask_sha256}
    h = hashlib.sha256()
    for it in sorted(masked, key=lambda it: it.id):
        h.update(f"{it.id}\0{it.mask_sha256}\n".encode())
    return {"source": "/".join(sources), "n": len(masked), "sha256": h.hexdigest()}


def load_item_mask(item, size: int) -> tuple[torch.Tensor | None, dict | None]:
    """An item's mask in the model's frame and what its record says of it: (None, None) without a mask. A mask
    that is all ones is the whole image: its tensor is None so that the result is exactly the unmasked one. An
    unusable mask becomes the item's input error."""
    if not item.mask or item.error:
        return None, None
    try:
        if item.mask_source == "auto":  # made in the model's frame already (runs/automask.py)
            mask = load_mask(item.mask, size=size, image_size=(size, size))
        else:
            mask = load_mask(item.mask, size=size, image_size=item.original_size)
    except InvMMInputError as exc:
        item.error = f"{exc} (the mask of {item.origin})"
        return None, None
    info = {"source": item.mask_source, "path": item.mask, "sha256": item.mask_sha256,
            "fraction": round(masked_fraction(mask), 6)}
    return (None if bool((mask >= 1.0).all()) else mask), info
