"""`invmm mitigation-eval`: every mitigation (and `none`, the model as it is) on the same trigger images, the same
noise and the same settings: plain re-trigger, adversarial re-trigger by inversion, side effects on other captions
(analysis/mitigation_eval.py says what each number is). Each mitigation's inversions are an ordinary audit folder,
OUT/invmm/<mitigation>/<mode>, resumable; the tables are rewritten at the end of every run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from invmm.analysis.mitigation_eval import (
    COLUMNS,
    SIDE_COLUMNS,
    plain_numbers,
    side_numbers,
    summarise,
    write_csv,
)
from invmm.config import InvMMConfig
from invmm.data.images import ImageItem
from invmm.errors import InvMMInputError
from invmm.families.conditions import cond_expand
from invmm.functional import seed_from
from invmm.mitigations import MitigationError, build_mitigations
from invmm.records import summarise as summarise_records
from invmm.runs.audit import audit
from invmm.runs.scores import decoded
from invmm.similarity import build_similarity
from invmm.store.files import Ledger, atomic_write_json

MODES = ("known", "inverted")


def folder_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", spec) or "none"


def default_guidance(adapter, config: InvMMConfig) -> float:
    """MemBench generates at guidance 7.5 (Stable Diffusion's default); a model without classifier-free guidance
    at its preset's largest scale."""
    return 7.5 if getattr(adapter, "guidance_kind", "cfg") == "cfg" else float(max(config.guidance_scales))


def _noise(adapter, seed: int, what: str, key: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_from(seed, "mitigation-eval", what, key))
    return torch.randn((n, *adapter.latent_shape), generator=g)


@torch.no_grad()
def _generate(adapter, caption: str, noise: torch.Tensor, config: InvMMConfig, guidance: float, batch: int = 16):
    cond = cond_expand(adapter.prompt_embeddings([caption]), 1)
    out = []
    for lo in range(0, len(noise), batch):
        part = noise[lo:lo + batch]
        out.append(adapter.generate(part, steps=config.sampler_steps, cond=cond_expand(cond, len(part)),
                                    guidance=guidance, schedule=config.check_schedule).float().cpu())
    return torch.cat(out)


def evaluate_mitigations(load: Callable[[str], object], specs: list[str], triggers: list[ImageItem],
                         others: list[ImageItem], config_for: Callable[[object, bool], InvMMConfig], out: str | Path,
                         *, generations: int = 10, side_generations: int = 4, guidance: float | None = None,
                         modes: tuple[str, ...] = MODES, change_threshold: float | None = None,
                         batch_images: int = 8, on_progress: Callable[[str], None] | None = None) -> dict:
    """`load(spec)` gives the model under one mitigation spec ("none": as it is); `config_for(adapter, inverted)` the
    InvMM config with the known caption (inverted False) or the conditioning inverted. Returns {"rows", "side",
    "summary", "settings"} and writes OUT/mitigation.csv, OUT/side_effects.csv, OUT/summary.csv and
    OUT/mitigation.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = on_progress or (lambda _: None)
    if not specs or specs[0].split(":")[0] != "none":
        specs = ["none", *[s for s in specs if s.split(":")[0] != "none"]]  # the baseline is always measured, first
    base = load("none")
    for spec in specs[1:]:  # every mitigation checked against the model before anything runs
        try:
            build_mitigations([spec], base)
        except MitigationError as exc:
            raise InvMMInputError(str(exc)) from None
    missing = [it.id for it in triggers if not it.caption]
    if missing:
        raise InvMMInputError(f"trigger images need their training caption (a 'caption' column); {len(missing)} "
                              f"have none (first: {missing[0]})")
    config = config_for(base, False)
    guidance = default_guidance(base, config) if guidance is None else guidance
    similarity = build_similarity(config.similarity, sscd_model=config.sscd_model, sscd_resize=config.sscd_resize)
    beta = config.beta
    threshold = beta if change_threshold is None else change_threshold
    targets = {}
    for it in triggers:
        loaded = decoded(it, base)
        if loaded.error:
            raise InvMMInputError(f"trigger {it.id}: {loaded.error}")
        targets[it.id] = loaded.pixels
    other_captions = [(it.id, it.caption) for it in others if it.caption]
    unmitigated = {key: _generate(base, caption, _noise(base, config.seed, "side", key, side_generations), config,
                                  guidance) for key, caption in other_captions}
    rows, side = [], []
    for spec in specs:
        adapter = base if spec == "none" else load(spec)
        say(f"{spec}: plain re-trigger ({generations} generations x {len(triggers)} images)")
        for it in triggers:
            images = _generate(adapter, it.caption, _noise(adapter, config.seed, "plain", it.id, generations),
                               config, guidance)
            sims = [float(v) for v in similarity(images, targets[it.id])]
            rows.append({"id": it.id, "caption": it.caption, "mitigation": spec, **plain_numbers(sims, beta)})
        for key, caption in other_captions:
            images = _generate(adapter, caption, _noise(adapter, config.seed, "side", key, side_generations), config,
                               guidance)
            sims = [float(similarity(images[i:i + 1], unmitigated[key][i])[0]) for i in range(len(images))]
            side.append({"id": key, "caption": caption, "mitigation": spec, **side_numbers(sims, threshold)})
        mine = {r["id"]: r for r in rows if r["mitigation"] == spec}
        for mode in MODES:
            prefix = "adversarial" if mode == "known" else "inverted"
            if mode not in modes:
                for r in mine.values():
                    r[f"{prefix}_reproduced"], r[f"{prefix}_score"] = None, None
                continue
            say(f"{spec}: adversarial re-trigger, InvMM with the {mode} conditioning")
            run = out / "invmm" / folder_name(spec) / mode
            audit(adapter.describe().get("source"), triggers,
                  config_for(adapter, mode == "inverted"), run, adapter=adapter, batch_images=batch_images,
                  run_extra={"mitigation_eval": {"mitigation": spec, "mode": mode}})
            for s in summarise_records(Ledger(run).read()):
                r = mine.get(s.id)
                if r is None:
                    continue
                ok = s.status == "ok" and s.score is not None and math.isfinite(s.score)
                r[f"{prefix}_reproduced"] = ok if s.status == "ok" else None
                r[f"{prefix}_score"] = s.score if s.status == "ok" else None
                if mode == "known":
                    r["adversarial_steps"] = s.steps
    summary = summarise(rows, side, beta)
    settings = {"generations": generations, "side_generations": side_generations, "guidance": guidance,
                "sampler_steps": config.sampler_steps, "similarity": config.similarity, "threshold": beta,
                "change_threshold": threshold, "max_steps": config.max_steps, "seed": config.seed,
                "modes": list(modes), "mitigations": specs}
    write_csv(rows, COLUMNS, out / "mitigation.csv")
    write_csv(side, SIDE_COLUMNS, out / "side_effects.csv")
    write_csv(summary, list(summary[0]) if summary else [], out / "summary.csv")
    atomic_write_json(out / "mitigation.json", _finite({"settings": settings, "summary": summary, "rows": rows,
                                                        "side_effects": side}))
    return {"rows": rows, "side": side, "summary": summary, "settings": settings}


def _finite(value):
    """JSON has no infinity: a score that is inf (not reproduced) is written as null beside its `reproduced` flag."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
