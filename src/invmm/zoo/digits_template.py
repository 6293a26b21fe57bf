"""Toy pixel-space DDPM on the 8x8 digits with planted *template* memorization (partial memorization).

Four templates, each a fixed 4x4 binary pattern in its own quadrant of the image, are pasted over many
different training digits: the pattern is seen `members` times, always in the same place, while the rest of each
image is a digit seen once. The model learns the pattern in its place (a "template verbatim", Webster 2023)
but not the digits around it, so whole-image InvMM cannot reproduce a member while the region can be.
Held-out images have the same layout (a 4x4 pattern in one of the four quadrants) with a pattern the model never
saw, over a digit it never saw. 200 ordinary digits, seen once each, keep the model a model of digits.

manifest.json lists every image: `source_index` into `sklearn.datasets.load_digits()`, its split, its
`template` (0..3, or null), the `region` [top, left, bottom, right) of its pattern and the `pattern` itself
(16 values, 0 or 255, row by row), so the images and their planted masks can be rebuilt exactly
(`export_template_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invmm.functional import seed_from
from invmm.zoo.digits import (
    DigitsTrainConfig,
    build_scheduler,
    build_unet,
    denoiser_checkpoints,
    digits_uint8,
    save_model,
    to_model_space,
    train_denoiser,
)

TEMPLATE_KIND = "invmm-zoo-digits-template"
SIDE = 8
PATCH = 4
# The quadrant of each template: [top, left, bottom, right).
REGIONS = ((0, 0, 4, 4), (0, 4, 4, 8), (4, 0, 8, 4), (4, 4, 8, 8))


@dataclass
class DigitsTemplateConfig(DigitsTrainConfig):
    members: int = 64  # distinct training digits that carry each template
    n_plain: int = 200  # ordinary training digits, seen once
    n_heldout: int = 64  # held-out images, 16 per quadrant, each with a pattern never trained
    min_distance: int = 6  # templates differ from each other and from held-out patterns in >= this many pixels

    def to_json(self) -> dict:
        d = super().to_json()
        d.pop("levels")
        return d


def _patterns(rng: np.random.Generator, n: int, *, apart: int, taken: list[np.ndarray] = (),
              from_taken: int = 0) -> list[np.ndarray]:
    """n random 4x4 binary patterns (6 to 10 pixels on: neither blank nor full), at least `apart` pixels apart
    from each other and `from_taken` from those already taken."""
    out: list[np.ndarray] = []
    for _ in range(100_000):
        if len(out) == n:
            return out
        p = (rng.random(PATCH * PATCH) < 0.5).astype(np.uint8)
        if 6 <= p.sum() <= 10 and all(int((p != q).sum()) >= apart for q in out) and \
                all(int((p != q).sum()) >= from_taken for q in taken):
            out.append(p)
    raise ValueError(f"cannot find {n} patterns {apart} pixels apart; lower min_distance")


def plan_template_dataset(cfg: DigitsTemplateConfig) -> list[dict]:
    """Every image of the toy, from the seed only: template members, plain digits, held-out images."""
    n_total = len(digits_uint8())
    needed = 4 * cfg.members + cfg.n_plain + cfg.n_heldout
    if needed > n_total:
        raise ValueError(f"the plan needs {needed} distinct digits but only {n_total} exist")
    rng = np.random.default_rng(seed_from(cfg.seed, "digits-template-plan"))
    order = rng.permutation(n_total)
    templates = _patterns(rng, len(REGIONS), apart=cfg.min_distance)
    # A held-out pattern is far from every template; held-out patterns need only differ from each other.
    novel = _patterns(rng, cfg.n_heldout, apart=2, taken=templates, from_taken=cfg.min_distance)
    entries, pos = [], 0
    for k, region in enumerate(REGIONS):
        for src in order[pos : pos + cfg.members]:
            entries.append({"id": f"template{k}-{int(src):04d}", "source_index": int(src), "split": "train",
                            "template": k, "region": list(region), "pattern": (templates[k] * 255).tolist()})
        pos += cfg.members
    for src in order[pos : pos + cfg.n_plain]:
        entries.append({"id": f"plain-{int(src):04d}", "source_index": int(src), "split": "train", "template": None,
                        "region": None, "pattern": None})
    pos += cfg.n_plain
    for i, src in enumerate(order[pos : pos + cfg.n_heldout]):
        region = REGIONS[i % len(REGIONS)]
        entries.append({"id": f"heldout{i % len(REGIONS)}-{int(src):04d}", "source_index": int(src),
                        "split": "heldout", "template": None, "region": list(region),
                        "pattern": (novel[i] * 255).tolist()})
    return entries


def template_pixels(entry: dict, digits: np.ndarray | None = None) -> np.ndarray:
    """The image of a manifest entry as uint8 [8, 8]: its digit with its pattern pasted into its region."""
    digits = digits_uint8() if digits is None else digits
    img = digits[entry["source_index"]].copy()
    if entry.get("region"):
        t, left, b, r = entry["region"]
        img[t:b, left:r] = np.asarray(entry["pattern"], dtype=np.uint8).reshape(b - t, r - left)
    return img


def template_mask(entry: dict) -> np.ndarray | None:
    """The planted mask of an entry: 255 on its region, 0 elsewhere (None for a plain digit)."""
    if not entry.get("region"):
        return None
    t, left, b, r = entry["region"]
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[t:b, left:r] = 255
    return mask


def train_digits_template(cfg: DigitsTemplateConfig, out: Path, log=print) -> dict:
    """Train the template toy and write a diffusers folder (`DDPMPipeline` layout) plus manifest.json."""
    torch.manual_seed(cfg.seed)
    entries = plan_template_dataset(cfg)
    digits = digits_uint8()
    train = np.stack([template_pixels(e, digits) for e in entries if e["split"] == "train"])
    data = to_model_space(train).unsqueeze(1)
    unet, scheduler = build_unet(cfg), build_scheduler(cfg)
    gen = torch.Generator().manual_seed(seed_from(cfg.seed, "digits-template-train"))
    losses, seconds = train_denoiser(unet, scheduler, data, cfg, gen, log,
                                     on_step=denoiser_checkpoints(unet, out, cfg.checkpoint_every, cfg.steps))
    manifest = {
        "kind": TEMPLATE_KIND,
        "pixels": "sklearn.datasets.load_digits().images, 0..16 scaled to uint8 0..255, with `pattern` pasted "
                  "into `region` [top, left, bottom, right)",
        "train_config": cfg.to_json(),
        "n_train_samples": int(len(data)),
        "images": entries,
        "step": cfg.steps,
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses[-500:])),
    }
    save_model(unet, scheduler, out, manifest)
    return manifest


def export_template_images(manifest: dict, out: Path, ids: list[str] | None = None) -> Path:
    """The template toy's images as PNGs in OUT/images, their planted masks in OUT/masks and OUT/manifest.csv
    (path, id, split, template, label, mask; plain digits have no mask). Returns the manifest's path."""
    import csv

    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    digits = digits_uint8()
    wanted = set(ids) if ids is not None else None
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "source_index", "split", "template", "label", "mask"])
        for e in manifest["images"]:
            if wanted is not None and e["id"] not in wanted:
                continue
            Image.fromarray(template_pixels(e, digits), mode="L").save(out / "images" / f"{e['id']}.png")
            mask = template_mask(e)
            mask_path = ""
            if mask is not None:
                mask_path = f"masks/{e['id']}.png"
                Image.fromarray(mask, mode="L").save(out / mask_path)
            label = "template" if e["template"] is not None else ("held out" if e["split"] == "heldout" else "plain")
            w.writerow([f"images/{e['id']}.png", e["id"], e["source_index"], e["split"],
                        "" if e["template"] is None else e["template"], label, mask_path])
    return out / "manifest.csv"


def template_groups(manifest: dict, per_group: int) -> list[dict]:
    """The first `per_group` members of each template and held-out images of each layout (manifest order): the
    evaluation set of the benchmark and the README's worked command."""
    chosen = []
    for prefix in [f"template{k}-" for k in range(len(REGIONS))] + [f"heldout{k}-" for k in range(len(REGIONS))]:
        chosen += [e for e in manifest["images"] if e["id"].startswith(prefix)][:per_group]
    return chosen
