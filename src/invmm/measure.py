"""`invmm.measure`: images + a model -> one InvMM result per image, optionally written to a run folder."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch

from invmm.artifacts import write_image_artifacts
from invmm.audit.ledger import Ledger
from invmm.config import InvMMConfig, preset
from invmm.errors import InvMMInputError
from invmm.images import ImageItem, collect_images, load_image
from invmm.inversion import Inverter, Outcome, Target, check_grid
from invmm.result import Result
from invmm.similarity import build_similarity

FAMILY_PRESET = {"pixel": "ddpm", "latent": "ldm", "text2image": "sd", "flow": "sd3"}
PACKAGES = ("invmm", "torch", "diffusers", "numpy", "onnxruntime", "safetensors", "pillow", "scikit-learn")


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def default_similarity(adapter) -> str:
    # SSCD was trained on photos; on grayscale or tiny images its descriptor carries no copy signal.
    return "pixel" if adapter.image_mode == "L" or adapter.image_size < 32 else "sscd"


def check_sampler_steps(adapter, config: InvMMConfig) -> None:
    """A DDIM check cannot take more steps than the model has training timesteps: refuse it up front."""
    n_train = getattr(adapter, "num_train_timesteps", None)
    if n_train is not None and config.sampler_steps > n_train:
        raise InvMMInputError(
            f"sampler_steps {config.sampler_steps} exceeds the {n_train} timesteps the model was trained with; "
            f"pass --sampler-steps {n_train} or fewer"
        )


def default_config(adapter, **overrides) -> InvMMConfig:
    similarity = overrides.pop("similarity", None) or default_similarity(adapter)
    name = overrides.pop("preset", None) or FAMILY_PRESET[adapter.family]
    return preset(name, similarity=similarity, **overrides)


def measure(
    model,
    images: Sequence[str | Path | ImageItem],
    config: InvMMConfig | None = None,
    *,
    out: str | Path | None = None,
    batch_images: int = 8,
    device: str = "cpu",
    allow_pickle: bool = False,
    hub: bool = False,
    on_result: Callable[[Result], None] | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    run_extra: dict | None = None,
    prompt: str | None = None,
) -> list[Result]:
    """Measure InvMM for each image. `model` is a diffusers folder (or hub id with hub=True) or an adapter.

    Images that cannot be used get a Result with status "error" and a message; the others are measured.
    With `out`, the run folder gets run.json, results.jsonl (a line per image, as it finishes), and per
    image its fitted mu/logvar (safetensors) and a PNG of the target beside the last check's samples.
    """
    from invmm.adapters.loading import load_adapter

    adapter = model if hasattr(model, "predict_x0") else load_adapter(
        str(model), device=device, hub=hub, allow_pickle=allow_pickle
    )
    config = config or default_config(adapter)
    check_sampler_steps(adapter, config)
    similarity = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    model_desc = adapter.describe()

    items: list[ImageItem] = []
    for im in images:
        if isinstance(im, ImageItem):
            items.append(im)
        else:
            items.extend(collect_images([str(im)]))
    items = [load_image(it, mode=adapter.image_mode, size=adapter.image_size) for it in items]
    if prompt is not None:
        for it in items:
            it.caption = it.caption if it.caption is not None else prompt

    ledger = None
    if out is not None:
        run_info = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model_desc,
            "config": config.to_json(),
            "check_grid": check_grid(adapter, config),
            "similarity": similarity.describe(),
            "batch_images": batch_images,
            "device": str(adapter.device),
            "versions": package_versions(),
            "torch_threads": torch.get_num_threads(),
            "images": [{"id": it.id, "path": it.path} for it in items],
            **(run_extra or {}),
        }
        ledger = Ledger.create(Path(out), run_info)

    by_id = {it.id: it for it in items}
    results: list[Result] = []
    if on_start:
        on_start(len(items))

    def record(res: Result, outcome: Outcome | None = None) -> None:
        it = by_id.get(res.id)
        if it is not None:
            res.resized = it.resized
            res.original_size = list(it.original_size) if it.original_size else None
        res.model = model_desc.get("source")
        res.config = config.to_json()
        if ledger is not None and outcome is not None and outcome.mu is not None and it is not None:
            write_image_artifacts(ledger.run_dir, res.id, it.pixels, outcome)
        if ledger is not None:
            ledger.append(res)
        results.append(res)
        if on_result:
            on_result(res)

    for it in items:
        if it.error:
            record(Result(id=it.id, path=it.path, status="error", error=it.error, error_kind="input",
                          seed=config.seed))

    targets = [Target(id=it.id, pixels=it.pixels, path=it.path, caption=it.caption) for it in items if not it.error]
    if targets:
        inverter = Inverter(adapter, config, similarity, batch_images=batch_images)
        inverter.run(targets, on_done=lambda o: record(o.result, o), on_step=on_step)
    order = {it.id: i for i, it in enumerate(items)}
    return sorted(results, key=lambda r: order.get(r.id, len(order)))
