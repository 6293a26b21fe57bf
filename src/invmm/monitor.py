"""`invmm.TrainingMonitor`: memorization watched from inside a training loop (diffusers' scripts, accelerate).

Created once with the pipeline the trained model belongs to and a probe set (training images, and ideally images of
the same kind the model never sees); called every K optimisation steps with the model being trained. Every call
runs a cheap signal, a one-pass scorer's member vs non-member gap (and AUC); every `invmm_every`-th call InvMM runs,
with a small budget, on the probes that signal finds most suspicious. Each call appends a line to a JSONL file, logs
through the accelerator's trackers when one is given, and returns a MonitorCheck that is true when a limit was
crossed, so that the loop can save or stop.

The model being trained stands in for the pipeline's denoiser during a call and is handed back as it came: its
train/eval mode and every parameter's requires_grad restored, its gradients untouched (nothing is computed with
respect to its weights), and the global random state of torch restored, so that the training's own draws go on as
if the monitor had not run.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from invmm.config import InvMMConfig, default_config
from invmm.data.images import ImageItem, collect_images
from invmm.errors import InvMMInputError
from invmm.families import load_adapter
from invmm.runs.measure import measure
from invmm.runs.scores import decoded, score_loaded
from invmm.runs.screen import suspicion_order
from invmm.scorers import SCREEN_SCORERS, ScorerError, build_scorer

SMALL_BUDGET = 1000  # InvMM steps per probe in a monitor call: half the authors' 2,000, the toys' audit budget


@dataclass
class MonitorCheck:
    """One call of the monitor: the signal, InvMM's outcome where it ran, and whether a limit was crossed."""

    step: int
    signal: dict
    invmm: dict | None = None
    crossed: bool = False
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.crossed

    def to_json(self) -> dict:
        return asdict(self)


def _items(images, what: str) -> list[ImageItem]:
    items: list[ImageItem] = []
    for im in images or []:
        items.extend([im] if isinstance(im, ImageItem) else collect_images([str(im)]))
    bad = [it for it in items if it.error]
    if bad:
        raise InvMMInputError(f"TrainingMonitor {what}: {bad[0].error}")
    return items


class TrainingMonitor:
    """Watch memorization while a model trains.

    `pipeline`: the diffusers folder the trained denoiser belongs to (e.g. the pretrained model a fine-tune starts
    from), or an adapter; its own denoiser is released once loaded. `members`: training images to probe (paths or
    ImageItems; captions for a text-to-image model); `non_members`: images of the same kind it never trains on (the
    signal's baseline; without them the signal is the members' mean score alone). `signal`: a one-pass scorer spec
    (loss by default). `top` probes are inverted every `invmm_every` calls with `config` (the family's preset with a
    budget of SMALL_BUDGET steps by default). Limits: `max_reproduced` (crossed when more of the inverted probes are
    reproduced: 0 = the first copy), `max_auc` and `max_gap` on the signal (None: not used). `log_file`: the JSONL
    each call appends to; `accelerator`: an accelerate.Accelerator whose trackers get the figures and which unwraps
    the model. Every random draw derives from `seed`."""

    def __init__(self, pipeline, members, non_members=None, *, log_file: str | Path | None = None,
                 signal: str = "loss", invmm_every: int = 5, top: int = 4, config: InvMMConfig | None = None,
                 max_reproduced: int | None = 0, max_auc: float | None = None, max_gap: float | None = None,
                 accelerator=None, seed: int = 0, device: str = "auto", allow_pickle: bool = False,
                 batch_images: int = 8):
        if invmm_every < 0 or top < 0:
            raise InvMMInputError("TrainingMonitor: invmm_every and top must be >= 0 (0: no InvMM)")
        self.adapter = pipeline if hasattr(pipeline, "predict_x0") else load_adapter(
            str(pipeline), device=device, allow_pickle=allow_pickle)
        self.members = [decoded(it, self.adapter) for it in _items(members, "members")]
        self.non_members = [decoded(it, self.adapter) for it in _items(non_members, "non_members")]
        self.adapter.denoiser = None  # the model being trained takes its place at each call
        if not self.members:
            raise InvMMInputError("TrainingMonitor: give at least one member image to probe")
        if signal.split(":")[0] not in SCREEN_SCORERS:
            raise InvMMInputError(f"TrainingMonitor signal {signal!r}: a one-pass scorer ({', '.join(SCREEN_SCORERS)})")
        self.signal_spec, self.seed = signal, seed
        self.config = config or default_config(self.adapter, max_steps=SMALL_BUDGET, seed=seed)
        self.invmm_every, self.top, self.batch_images = invmm_every, top, batch_images
        self.max_reproduced, self.max_auc, self.max_gap = max_reproduced, max_auc, max_gap
        self.accelerator = accelerator
        self.log_file = Path(log_file) if log_file else None
        self.calls = 0
        self.history: list[MonitorCheck] = []

    def __call__(self, step: int, model) -> MonitorCheck:
        """Check the model being trained at optimisation step `step`; True when a limit was crossed."""
        t0 = time.perf_counter()
        if self.accelerator is not None:
            model = self.accelerator.unwrap_model(model)
        self.calls += 1
        run_invmm = bool(self.invmm_every and self.top) and (self.calls - 1) % self.invmm_every == 0
        with _lent(model, self.adapter):
            signal, ranked = self._signal()
            result = self._invmm(ranked) if run_invmm else None
        check = MonitorCheck(step, signal, result)
        self._judge(check)
        check.seconds = round(time.perf_counter() - t0, 3)
        self.history.append(check)
        self._record(check)
        return check

    def _signal(self) -> tuple[dict, list[str]]:
        try:
            scorer = build_scorer(self.signal_spec, self.adapter)
        except ScorerError as exc:
            raise InvMMInputError(f"TrainingMonitor signal {self.signal_spec!r}: {exc}") from None
        members = score_loaded(scorer, self.adapter, self.members, self.seed)
        others = score_loaded(scorer, self.adapter, self.non_members, self.seed) if self.non_members else []
        sign = 1.0 if scorer.higher_is_better else -1.0
        m = [r.score for r in members if r.status == "ok" and math.isfinite(r.score)]
        n = [r.score for r in others if r.status == "ok" and math.isfinite(r.score)]
        out = {"scorer": scorer.name, "higher_is_better": scorer.higher_is_better,
               "members_mean": statistics.fmean(m) if m else None,
               "non_members_mean": statistics.fmean(n) if n else None, "gap": None, "auc": None}
        if m and n:
            # Positive when the members look more memorized than the non-members, whatever the scorer's direction.
            out["gap"] = sign * (statistics.fmean(m) - statistics.fmean(n))
            from sklearn.metrics import roc_auc_score

            out["auc"] = float(roc_auc_score([1] * len(m) + [0] * len(n), [sign * s for s in m + n]))
        ranked = [r.id for r in suspicion_order(members, scorer.higher_is_better)]
        return out, ranked

    def _invmm(self, ranked: list[str]) -> dict:
        chosen = ranked[: self.top]
        by_id = {it.id: it for it in self.members}
        results = measure(self.adapter, [by_id[i] for i in chosen], self.config, batch_images=self.batch_images)
        scores = {r.id: (r.score if r.status == "ok" else None) for r in results}
        reproduced = [i for i, s in scores.items() if s is not None and math.isfinite(s)]
        return {"images": chosen, "reproduced": reproduced, "max_steps": self.config.max_steps,
                "scores": {i: (None if s is None or not math.isfinite(s) else round(s, 6)) for i, s in scores.items()}}

    def _judge(self, check: MonitorCheck) -> None:
        if check.invmm is not None and self.max_reproduced is not None and \
                len(check.invmm["reproduced"]) > self.max_reproduced:
            check.reasons.append(f"{len(check.invmm['reproduced'])} of {len(check.invmm['images'])} probes reproduced "
                                 f"within {check.invmm['max_steps']} steps (limit {self.max_reproduced})")
        auc, gap = check.signal.get("auc"), check.signal.get("gap")
        if self.max_auc is not None and auc is not None and auc >= self.max_auc:
            check.reasons.append(f"{check.signal['scorer']} member AUC {auc:.3f} >= {self.max_auc}")
        if self.max_gap is not None and gap is not None and gap >= self.max_gap:
            check.reasons.append(f"{check.signal['scorer']} member gap {gap:.4g} >= {self.max_gap}")
        check.crossed = bool(check.reasons)

    def _record(self, check: MonitorCheck) -> None:
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(check.to_json()) + "\n")
        if self.accelerator is not None:
            values = {f"invmm/{k}": v for k, v in (("gap", check.signal["gap"]), ("auc", check.signal["auc"]),
                                                    ("members_mean", check.signal["members_mean"])) if v is not None}
            if check.invmm is not None:
                values["invmm/reproduced"] = len(check.invmm["reproduced"])
            values["invmm/crossed"] = int(check.crossed)
            self.accelerator.log(values, step=check.step)


class _lent:
    """The model being trained as the adapter's denoiser for one call, handed back as it came."""

    def __init__(self, model, adapter):
        self.model, self.adapter = model, adapter

    def __enter__(self):
        params = list(self.model.parameters())
        if params and params[0].device != torch.device(self.adapter.device) and \
                params[0].device.type != torch.device(self.adapter.device).type:
            raise InvMMInputError(f"TrainingMonitor: the model is on {params[0].device} and the monitor's pipeline on "
                                  f"{self.adapter.device}; create the monitor with device={params[0].device.type!r}")
        self.training = self.model.training
        self.flags = [p.requires_grad for p in params]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.rng = torch.random.fork_rng(devices=devices)
        self.rng.__enter__()
        self.model.eval().requires_grad_(False)
        self.adapter.denoiser = self.model
        return self

    def __exit__(self, *exc):
        self.adapter.denoiser = None
        for p, flag in zip(self.model.parameters(), self.flags):
            p.requires_grad_(flag)
        self.model.train(self.training)
        self.rng.__exit__(*exc)
        return False
