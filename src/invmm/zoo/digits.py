"""Toy pixel-space DDPM on scikit-learn's bundled 8x8 handwritten digits, with planted memorization.

Chosen training images are repeated at several duplication levels; held-out images are never seen.
The model is tiny and trains on a CPU in minutes, so it is the default for the demo and the tests.
The manifest written next to the model says, for every image, where its pixels come from
(`source_index` into `sklearn.datasets.load_digits`), its duplication level and its split.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from invmm.functional import seed_from

# Duplication level -> number of distinct images trained with that many copies.
DEFAULT_LEVELS = {64: 8, 16: 8, 4: 8, 1: 200}


@dataclass
class DigitsTrainConfig:
    seed: int = 0
    levels: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    n_heldout: int = 200
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    checkpoint_every: int = 0  # 0: no intermediate checkpoints; N: checkpoint-N/unet/ as diffusers' scripts write it

    def to_json(self) -> dict:
        d = asdict(self)
        d["levels"] = {str(k): v for k, v in self.levels.items()}
        d["block_out_channels"] = list(self.block_out_channels)
        return d


def digits_uint8() -> np.ndarray:
    """All 1,797 digits as uint8 [N, 8, 8]; 0..16 ink levels stretched to 0..255 as a PNG would hold them."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)


def plan_dataset(cfg: DigitsTrainConfig) -> list[dict]:
    """Assign source images to duplication levels and the held-out split, from the seed only."""
    n_total = len(digits_uint8())
    needed = sum(cfg.levels.values()) + cfg.n_heldout
    if needed > n_total:
        raise ValueError(f"the plan needs {needed} distinct digits but only {n_total} exist")
    order = np.random.default_rng(cfg.seed).permutation(n_total)
    entries, pos = [], 0
    for level in sorted(cfg.levels, reverse=True):
        for src in order[pos : pos + cfg.levels[level]]:
            entries.append({"source_index": int(src), "copies": int(level), "split": "train"})
        pos += cfg.levels[level]
    for src in order[pos : pos + cfg.n_heldout]:
        entries.append({"source_index": int(src), "copies": 0, "split": "heldout"})
    for e in entries:
        e["id"] = f"digit-{e['source_index']:04d}"
    return entries


def training_sources(entries: list[dict]) -> np.ndarray:
    """The source index of every training sample: each copy of a duplicated image is its own sample, so it is
    drawn proportionally more often."""
    train = [e for e in entries if e["split"] == "train"]
    return np.concatenate([[e["source_index"]] * e["copies"] for e in train])


def write_trained_manifest(out: Path, kind: str, cfg, entries: list[dict], n_samples: int, losses: list[float],
                           seconds: float) -> dict:
    """manifest.json of a trained toy: its plan, training config and final loss."""
    manifest = {
        "kind": kind,
        "pixels": "sklearn.datasets.load_digits().images, 0..16 scaled to uint8 0..255",
        "train_config": cfg.to_json(),
        "n_train_samples": int(n_samples),
        "images": entries,
        "step": cfg.steps,
        "train_seconds": seconds,
        "final_loss": float(np.mean(losses[-500:])),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def to_model_space(pixels_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels_uint8.astype(np.float32) / 127.5 - 1.0)


def build_unet(cfg: DigitsTrainConfig):
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=8,
    )


def build_scheduler(cfg: DigitsTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )


def save_model(unet, scheduler, out: Path, manifest: dict) -> None:
    from diffusers import DDPMPipeline

    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def denoiser_checkpoints(denoiser, out: Path, every: int, last: int, subfolder: str = "unet"):
    """An on_step callback that writes OUT/checkpoint-N/unet/ every `every` steps before the last, the layout of
    diffusers' training scripts (their save hook writes the denoiser alone; the final pipeline goes to OUT), which
    `invmm track OUT DATA --base OUT` reads. None when `every` is 0."""
    if not every:
        return None

    def on_step(step: int) -> None:
        if step % every == 0 and step != last:
            denoiser.save_pretrained(Path(out) / f"checkpoint-{step}" / subfolder, safe_serialization=True)

    return on_step


def train_digits(cfg: DigitsTrainConfig, out: Path, log=print) -> dict:
    """Train the toy model and write a diffusers folder (`DDPMPipeline` layout) plus manifest.json."""
    torch.manual_seed(cfg.seed)
    entries = plan_dataset(cfg)
    data = to_model_space(digits_uint8()[training_sources(entries)]).unsqueeze(1)

    unet = build_unet(cfg)
    scheduler = build_scheduler(cfg)
    gen = torch.Generator().manual_seed(seed_from(cfg.seed, "digits-train"))
    manifest = {
        "kind": "invmm-zoo-digits",
        "pixels": "sklearn.datasets.load_digits().images, 0..16 scaled to uint8 0..255",
        "train_config": cfg.to_json(),
        "n_train_samples": int(len(data)),
        "images": entries,
    }

    losses, seconds = train_denoiser(unet, scheduler, data, cfg, gen, log,
                                     on_step=denoiser_checkpoints(unet, out, cfg.checkpoint_every, cfg.steps))
    manifest["step"] = cfg.steps
    manifest["train_seconds"] = seconds
    manifest["final_loss"] = float(np.mean(losses[-500:]))
    save_model(unet, scheduler, out, manifest)
    return manifest


def train_denoiser(unet, scheduler, data, cfg: DigitsTrainConfig, gen: torch.Generator, log, *,
                   condition=None, on_step=None) -> tuple[list[float], float]:
    """The epsilon-prediction DDPM training loop of the toy models (AdamW, linear warm-up).

    `condition(idx)` returns the conditioning of the drawn samples (cross-attention states, class labels); it
    draws after the batch, noise and timesteps, so every draw comes from `gen` in a fixed order.
    """
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    t0, losses = time.time(), []
    unet.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        pred = unet(xt, t).sample if condition is None else unet(xt, t, condition(idx)).sample
        # A learned-variance model (DiT) outputs [eps, variance]: the toys train the eps channels only.
        loss = torch.nn.functional.mse_loss(pred[:, : noise.shape[1]], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warm.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == cfg.steps:
            log(f"step {step}/{cfg.steps} loss {np.mean(losses[-500:]):.4f} ({time.time() - t0:.0f} s)")
        if on_step:
            on_step(step)
    unet.eval()
    return losses, round(time.time() - t0, 1)


def load_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def export_images(manifest: dict, out: Path, ids: list[str] | None = None) -> list[Path]:
    """Write toy images as 8x8 grayscale PNGs named by id; returns the paths in manifest order."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pixels = digits_uint8()
    wanted = set(ids) if ids is not None else None
    paths = []
    for e in manifest["images"]:
        if wanted is not None and e["id"] not in wanted:
            continue
        p = out / f"{e['id']}.png"
        Image.fromarray(pixels[e["source_index"]], mode="L").save(p)
        paths.append(p)
    return paths


def parse_level_counts(text: str) -> dict[int, int]:
    """"64:8,1:8,0:8" -> {64: 8, 1: 8, 0: 8} (duplication level: number of images; 0 = held out)."""
    try:
        return {int(k): int(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise ValueError(f"expected level:count pairs like 64:8,0:8, got {text!r}") from None


def select_images(manifest: dict, counts: dict[int, int]) -> list[dict]:
    """The first n images (manifest order) of each duplication level; level 0 means held out."""
    chosen = []
    for level, n in counts.items():
        group = [e for e in manifest["images"] if e["copies"] == level]
        if len(group) < n:
            raise ValueError(f"the manifest has {len(group)} images with {level} copies, {n} requested")
        chosen += group[:n]
    return chosen


def demo_images(manifest: dict, per_group: int) -> list[dict]:
    """The first `per_group` images of the most duplicated level, of the single-copy level and held out."""
    top = max(e["copies"] for e in manifest["images"])
    return select_images(manifest, {top: per_group, 1: per_group, 0: per_group})


def group_name(entry: dict) -> str:
    """"64 copies", "1 copy" or "held out": how the demo groups a manifest entry."""
    if entry["split"] == "heldout":
        return "held out"
    return f"{entry['copies']} cop{'y' if entry['copies'] == 1 else 'ies'}"


def write_manifest_csv(manifest: dict, paths: list[Path], out: Path) -> Path:
    """manifest.csv beside exported images: path, id, source index, copies, split, label (the group: "64
    copies", "held out", ...) and, for a text-to-image toy, the caption, for a class-conditional one, the class;
    `invmm audit` reads it as is."""
    import csv

    extra = [k for k in ("caption", "class") if any(k in e for e in manifest["images"])]
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "source_index", "copies", "split", "label"] + extra)
        for p, e in zip(paths, manifest["images"]):
            w.writerow([p.name, e["id"], e["source_index"], e["copies"], e["split"], group_name(e)]
                       + [e.get(k, "") for k in extra])
    return out / "manifest.csv"
