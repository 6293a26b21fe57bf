"""The adaptive InvMM loop over a batch of images: start each image, step the batch, check the images due, and
finish each image as it succeeds, diverges or runs out of budget; waiting images take the freed places.

Each image carries its own distribution, Adam state, lambda, loss history, random streams and stop state
(state.ImageState), so batching changes how many model calls are made, not what any image sees. The step and the
check are their own units (optimise.py, check.py); this one holds what they share.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable

import torch

from invmm.config import InvMMConfig
from invmm.errors import InvMMInputError
from invmm.functional import MAP_THRESHOLD, kl_to_standard_normal, seed_from
from invmm.inversion.check import SuccessCheck
from invmm.inversion.conditioning import conditioner, given_condition
from invmm.inversion.cost import Meter
from invmm.inversion.early_stop import EarlyStop
from invmm.inversion.optimise import OptimisationStep
from invmm.inversion.refine import Refiner
from invmm.inversion.state import ImageState, Outcome, Target
from invmm.records import InversionRecord
from invmm.repeats import repeat_seed

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def apply_memory_options(adapter, config: InvMMConfig) -> None:
    """Gradient checkpointing and attention slicing on the adapter's denoiser, where the model offers them."""
    net = adapter.denoiser
    if config.gradient_checkpointing:
        if not net._supports_gradient_checkpointing:
            raise InvMMInputError(f"--gradient-checkpointing: {type(net).__name__} does not support it; "
                                  "leave the option out for this model")
        net.enable_gradient_checkpointing()
    if config.attention_slicing and hasattr(net, "set_attention_slice"):
        net.set_attention_slice("auto")


def check_grid(adapter, config: InvMMConfig) -> dict:
    """What run.json records of the success check's sampler grid."""
    ts = adapter.check_timesteps(config.sampler_steps, config.check_schedule)
    return {"schedule": config.check_schedule, "steps": len(ts), "first": ts[0], "last": ts[-1]}


class Inverter:
    def __init__(self, adapter, config: InvMMConfig, similarity, *, batch_images: int = 8):
        if batch_images < 1:
            raise ValueError(f"batch_images must be >= 1, got {batch_images}")
        self.adapter = adapter
        self.config = config
        self.similarity = similarity
        self.batch_images = batch_images
        apply_memory_options(adapter, config)
        # Denoiser calls are counted from what each image puts into a batch (a check's per sampler step), the text
        # encoder(s) and the VAE encoder, called per image, by hooks on the modules (cost.py).
        self.check_steps = len(adapter.check_timesteps(config.sampler_steps, config.check_schedule))
        self.preview_steps = len(adapter.check_timesteps(config.check_preview_steps, config.check_schedule)) \
            if config.check_preview_steps else 0
        self.decodes = adapter.vae is not None
        self.guidance_kind = adapter.guidance_kind  # how a guidance scale costs (cost.py)
        self.meter = Meter(adapter)
        self.check = SuccessCheck(self)
        self.step = OptimisationStep(self)
        self.refiner = Refiner(self) if config.refine else None
        self.stopper = EarlyStop(self) if config.early_stop else None

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.config.precision)
        return torch.autocast(self.adapter.device.type, dtype=dtype, enabled=dtype is not None)

    def run(self, targets: Iterable[Target], on_done: Callable[[Outcome], None] | None = None,
            on_step: Callable[[list[int]], None] | None = None, *, keep: bool = True) -> list[Outcome]:
        """Invert every target, refilling the batch as images finish. `targets` is consumed lazily (an audit
        loads each image only when a slot frees up); with keep=False outcomes go only to on_done."""
        source = iter(targets)
        active: list[ImageState] = []
        outcomes: list[Outcome] = []
        with self.meter.attached():
            while True:
                while len(active) < self.batch_images and (target := next(source, None)) is not None:
                    active.append(self.start(target))
                if not active:
                    return outcomes
                finished, checking = self.step(active)
                ending = [s for s, ok, error in finished if not ok and error is None and s.paper is None]
                if ending and self.config.map_samples:  # the budget ended between checks: the map is made now
                    self.check.last_maps(ending)
                paper = [s for s in checking if s.paper is None]
                if paper:
                    finished += self.check(paper)
                    if self.refiner:  # every checked distribution, for the copy-probability estimates
                        for s in paper:
                            self.refiner.snapshot(s)
                    if self.stopper:  # only images whose check failed with budget left: the paper's rule first
                        ending_now = {id(s) for s, *_ in finished}
                        stopped = self.stopper([s for s in paper if id(s) not in ending_now])
                        if stopped and self.config.map_samples:
                            self.check.last_maps(stopped)
                        finished += [(s, False, None) for s in stopped]
                outcomes_now = self._close(finished, [s for s in checking if s.paper is not None])
                for s, outcome in outcomes_now:
                    active.remove(s)
                    if keep:
                        outcomes.append(outcome)
                    if on_done:
                        on_done(outcome)
                if on_step:
                    on_step([s.step for s in active])

    def _close(self, finished, refining) -> list[tuple[ImageState, Outcome]]:
        """The outcomes of the images that finish now. With the refinement, an image whose paper check passed
        keeps its paper outcome and goes on refining until its expectation is settled (refine.py)."""
        if self.refiner is None:
            return [(s, self.finish(s, success=ok, error=error)) for s, ok, error in finished]
        closing, begin = [], []
        for s, ok, error in finished:
            if s.paper is not None:  # a numerical error while refining: the expectation from the checks so far
                closing.append((s, self.refiner.outcome(s, error)))
            elif ok:
                s.paper = self.finish(s, success=True)
                begin.append(s)
            else:
                closing.append((s, self.finish(s, success=False, error=error)))
        stopped = {id(s) for s, *_ in finished}
        done = self.refiner.begin(begin) + self.refiner.check([s for s in refining if id(s) not in stopped])
        return closing + [(s, self.refiner.outcome(s)) for s in done]

    def start(self, target: Target) -> ImageState:
        """An image's initial state: its x0 (a VAE posterior drawn once from its own stream where the family
        draws one), its conditioning (known or to be learned), N(0, I) and Adam."""
        cfg, adapter = self.config, self.adapter
        image_seed = repeat_seed(cfg.seed, target.id, target.repeat)
        calls = Counter()
        with self.meter.metered(calls):
            with torch.no_grad():
                vae_gen = torch.Generator().manual_seed(seed_from(image_seed, "vae"))
                x0 = adapter.encode(target.pixels[None], generator=vae_gen)[0]
            cond = None
            if adapter.conditional:
                given = given_condition(target, adapter)
                invert = cfg.invert_prompt if cfg.invert_prompt is not None else (
                    given is None and adapter.default_invert_prompt)
                cond = conditioner(adapter, given, invert_prompt=invert, tau=cfg.gumbel_tau,
                                   seed=seed_from(image_seed, "gumbel"), original_size=target.original_size)
        mu = torch.zeros_like(x0, requires_grad=True)
        logvar = torch.zeros_like(x0, requires_grad=True)
        opt = torch.optim.Adam([mu, logvar, *(cond.params if cond else [])], lr=cfg.lr)
        weight = None
        if target.mask is not None and cfg.mask_loss == "weighted":
            # The share of each latent cell's pixels inside the mask (area average): a latent model's x0 is a grid
            # of cells, each standing for a patch of pixels.
            weight = torch.nn.functional.adaptive_avg_pool2d(target.mask[None].float(), x0.shape[-2:])[0]
            weight = weight.to(x0.device)
        # The stochastic sampler gets its own stream so that eta changes only the check, never the optimisation's
        # noise: the same fit is judged by both samplers.
        return ImageState(target, x0, mu, logvar, opt, torch.Generator().manual_seed(image_seed), image_seed,
                          cfg.lambda_init, cond=cond, calls=calls, loss_weight=weight,
                          sampler_gen=torch.Generator().manual_seed(seed_from(image_seed, "sampler")))

    def finish(self, s: ImageState, *, success: bool, error: str | None = None) -> Outcome:
        with torch.no_grad():
            kl = float(kl_to_standard_normal(s.mu[None], s.logvar[None])[0])
        record = InversionRecord(
            id=s.target.id, path=s.target.path, status="error" if error else "ok", error=error,
            error_kind="numerical" if error else None, score=kl if success else math.inf, success=success,
            steps=s.step, final_lambda=s.lam, kl=kl if math.isfinite(kl) else None,
            min_similarity=min(s.similarities) if s.similarities else None, similarities=list(s.similarities),
            checks=s.checks, seed=self.config.seed, image_seed=s.image_seed,
            seconds=round(time.perf_counter() - s.started, 3), caption=s.target.caption, repeat=s.target.repeat,
            guidance_scale=s.guidance_scale, calls=dict(s.calls), check_skips=dict(s.check_skips),
            refined_score=None if self.refiner is None or success or error else math.inf,
            mask=s.target.mask_info,
            reproduced_fraction=None if s.map is None else round(float((s.map >= MAP_THRESHOLD).float().mean()), 6),
            early_stop=self.stopper.record(s) if self.stopper else None,
            **(s.cond.describe() if s.cond else {}),
        )
        # Copies: on the CPU .cpu() is the tensor itself, which a refinement goes on optimising.
        return Outcome(record, s.mu.detach().cpu().clone(), s.logvar.detach().cpu().clone(), s.samples, s.map)
