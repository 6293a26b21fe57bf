"""The adaptive InvMM loop, family-agnostic and batched over images.

Each image carries its own mu, log-variance, Adam state, lambda, loss history, stop state and random
stream, so batching only changes how many model calls are made, not what any image sees. Images that
finish leave the batch and waiting images take their place.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from invmm.conditioning import conditioner, given_condition
from invmm.config import InvMMConfig
from invmm.cost import RowCounter, sample_forwards, text_encoders, vae_encoder
from invmm.errors import InvMMInputError
from invmm.families.conditions import cond_cat, cond_rows
from invmm.functional import kl_to_standard_normal, reparameterize, seed_from, update_lambda
from invmm.repeats import repeat_seed
from invmm.result import Result


@dataclass
class Target:
    id: str
    pixels: torch.Tensor  # [C, S, S] in [-1, 1], as the model sees it
    path: str = ""
    caption: str | None = None
    class_label: str | None = None  # class-conditional models: the image's class (index or name)
    original_size: tuple[int, int] | None = None  # (width, height) of the file, for size-conditioned models (SDXL)
    repeat: int = 0  # which independent inversion of this image (its random streams follow from it)


@dataclass
class _State:
    target: Target
    x0: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    opt: torch.optim.Optimizer
    gen: torch.Generator
    image_seed: int
    lam: float
    cond: object | None = None  # KnownPrompt / SoftPrompt for text-conditional models
    guidance_scale: float | None = None
    prev_check_mean: float = math.inf
    step: int = 0
    rec_history: list[float] = field(default_factory=list)
    checks: list[list[float]] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    samples: torch.Tensor | None = None
    sampler_gen: torch.Generator | None = None  # the check sampler's own noise (eta > 0)
    started: float = field(default_factory=time.perf_counter)
    calls: Counter = field(default_factory=Counter)  # model calls spent on this image (see cost.py)
    check_skips: Counter = field(default_factory=Counter)  # checks decided by an opt-in shortcut: preview, rec


@dataclass
class Outcome:
    result: Result
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    samples: torch.Tensor | None = None  # the last check's generated images, [-1, 1]


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def apply_memory_options(adapter, config: InvMMConfig) -> None:
    """Gradient checkpointing and attention slicing on the adapter's denoiser, where the model offers them."""
    net = adapter.denoiser
    if config.gradient_checkpointing and net is not None:
        if not getattr(net, "_supports_gradient_checkpointing", False):
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
        # Denoiser calls are counted from what each image puts into a batch; the text encoder(s) and the VAE
        # encoder, called per image, by hooks on the modules (cost.py).
        self.check_steps = len(adapter.check_timesteps(config.sampler_steps, config.check_schedule))
        self.preview_steps = len(adapter.check_timesteps(config.check_preview_steps, config.check_schedule)) \
            if config.check_preview_steps else 0
        self.decodes = adapter.vae is not None
        self.guidance_kind = adapter.guidance_kind  # how a guidance scale costs (cost.py)
        self._text = RowCounter(text_encoders(adapter))
        self._encoder = RowCounter([vae_encoder(adapter)])

    @contextlib.contextmanager
    def _metered(self, calls: Counter):
        """Adds the text-encoder and VAE-encoder rows of the enclosed per-image calls to `calls`."""
        text, enc = self._text.rows, self._encoder.rows
        yield
        calls["text_encoder"] += self._text.rows - text
        calls["vae_encode"] += self._encoder.rows - enc

    def _autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.config.precision)
        return torch.autocast(self.adapter.device.type, dtype=dtype, enabled=dtype is not None)

    def _start(self, target: Target) -> _State:
        cfg = self.config
        image_seed = repeat_seed(cfg.seed, target.id, target.repeat)
        gen = torch.Generator().manual_seed(image_seed)
        calls = Counter()
        with self._metered(calls):
            with torch.no_grad():
                # A VAE posterior is sampled once per image, from the image's own stream.
                vae_gen = torch.Generator().manual_seed(seed_from(image_seed, "vae"))
                x0 = self.adapter.encode(target.pixels[None], generator=vae_gen)[0]
            cond = None
            if self.adapter.conditional:
                given = given_condition(target, self.adapter)
                invert = cfg.invert_prompt if cfg.invert_prompt is not None else (
                    given is None and self.adapter.default_invert_prompt)
                cond = conditioner(self.adapter, given, invert_prompt=invert, tau=cfg.gumbel_tau,
                                   seed=seed_from(image_seed, "gumbel"), original_size=target.original_size)
        mu = torch.zeros_like(x0, requires_grad=True)
        logvar = torch.zeros_like(x0, requires_grad=True)
        opt = torch.optim.Adam([mu, logvar, *(cond.params if cond else [])], lr=cfg.lr)
        # The stochastic sampler gets its own stream so that eta changes only the check, never the
        # optimisation's noise: the same fit is judged by both samplers.
        sampler_gen = torch.Generator().manual_seed(seed_from(image_seed, "sampler"))
        return _State(target, x0, mu, logvar, opt, gen, image_seed, cfg.lambda_init, cond=cond,
                      sampler_gen=sampler_gen, calls=calls)

    def _finish(self, s: _State, *, success: bool, error: str | None = None) -> Outcome:
        with torch.no_grad():
            kl = float(kl_to_standard_normal(s.mu[None], s.logvar[None])[0])
        res = Result(
            id=s.target.id,
            path=s.target.path,
            status="error" if error else "ok",
            error=error,
            error_kind="numerical" if error else None,
            score=kl if success else math.inf,
            success=success,
            steps=s.step,
            final_lambda=s.lam,
            kl=kl if math.isfinite(kl) else None,
            min_similarity=min(s.similarities) if s.similarities else None,
            similarities=list(s.similarities),
            checks=s.checks,
            seed=self.config.seed,
            image_seed=s.image_seed,
            seconds=round(time.perf_counter() - s.started, 3),
            caption=s.target.caption,
            repeat=s.target.repeat,
            guidance_scale=s.guidance_scale,
            calls=dict(s.calls),
            check_skips=dict(s.check_skips),
            **(s.cond.describe() if s.cond else {}),
        )
        return Outcome(res, s.mu.detach().cpu(), s.logvar.detach().cpu(), s.samples)

    def run(self, targets: Iterable[Target], on_done: Callable[[Outcome], None] | None = None,
            on_step: Callable[[list[int]], None] | None = None, *, keep: bool = True) -> list[Outcome]:
        """Invert every target, refilling the batch as images finish. `targets` is consumed lazily (an audit
        loads each image only when a slot frees up); with keep=False outcomes go only to on_done."""
        with self._text.attached(), self._encoder.attached():
            return self._run(targets, on_done, on_step, keep)

    def _run(self, targets, on_done, on_step, keep) -> list[Outcome]:
        source = iter(targets)
        exhausted = False
        active: list[_State] = []
        outcomes: list[Outcome] = []

        def done(o: Outcome):
            if keep:
                outcomes.append(o)
            if on_done:
                on_done(o)

        while True:
            while not exhausted and len(active) < self.batch_images:
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                else:
                    active.append(self._start(nxt))
            if not active:
                break
            finished = self._step(active)
            for s, success, error in finished:
                active.remove(s)
                done(self._finish(s, success=success, error=error))
            if on_step:
                on_step([s.step for s in active])
        return outcomes

    def _step(self, active: list[_State]) -> list[tuple[_State, bool, str | None]]:
        """One optimisation step for every active image, then the checks that fall due."""
        cfg, adapter = self.config, self.adapter
        device = active[0].x0.device
        b = cfg.batch_size
        # Per-image draws from per-image generators, on the generators' device (the CPU): an image's noise depends
        # neither on its batch mates nor on the model's device.
        z = torch.stack([torch.randn((b, *s.x0.shape), generator=s.gen, device=s.gen.device)
                         for s in active]).to(device)
        t = torch.stack([adapter.sample_timesteps(b, s.gen) for s in active]).to(device)
        mu = torch.stack([s.mu for s in active])
        logvar = torch.stack([s.logvar for s in active])
        x0 = torch.stack([s.x0 for s in active])
        eps = reparameterize(mu[:, None], logvar[:, None], z)
        x0_rep = x0[:, None].expand_as(eps).reshape(-1, *x0.shape[1:])
        x_t = adapter.add_noise(x0_rep, eps.reshape(-1, *x0.shape[1:]), t.reshape(-1))
        with self._autocast():
            cond = None
            if active[0].cond is not None:
                parts = []
                for s in active:
                    with self._metered(s.calls):
                        parts.append(s.cond.sample(b, s.gen))
                cond = cond_cat(parts)
            x0_hat = adapter.predict_x0(x_t, t.reshape(-1), cond)
        for s in active:  # every row of the optimisation's forward is backpropagated
            s.calls["opt_forward"] += b
            s.calls["opt_backward"] += b
        rec = (x0_hat.float() - x0_rep).pow(2).flatten(1).mean(1).view(len(active), b).mean(1)
        norm = kl_to_standard_normal(mu, logvar)
        lam = torch.tensor([s.lam for s in active], device=device)
        loss = (rec + lam * norm).sum()
        for s in active:
            s.opt.zero_grad(set_to_none=True)
        loss.backward()

        finished: list[tuple[_State, bool, str | None]] = []
        checking: list[_State] = []
        rec_values = rec.detach().cpu().tolist()
        norm_values = norm.detach().cpu().tolist()
        for s, r, n in zip(active, rec_values, norm_values):
            s.step += 1
            if not (math.isfinite(r) and math.isfinite(n)):
                finished.append((s, False, self._nan_message(s, r, n)))
                continue
            s.opt.step()
            if not (torch.isfinite(s.mu).all() and torch.isfinite(s.logvar).all()):
                finished.append((s, False, self._nan_message(s, r, n)))
                continue
            s.rec_history.append(r)
            if len(s.rec_history) > cfg.window:
                del s.rec_history[: -cfg.window]
            s.lam, s.prev_check_mean, is_check = update_lambda(
                s.lam, s.step, s.rec_history, s.prev_check_mean,
                check_every=cfg.check_every, window=cfg.window, delta=cfg.delta, xi=cfg.xi,
            )
            if is_check and cfg.check_skip_rec is not None and s.prev_check_mean > cfg.check_skip_rec:
                # Opt-in: no sampling while the fit is still far from what reproduced images reach. The
                # check's random draws are still taken, so the fit goes on exactly as with the check.
                self._check_draws(s, encode=False)
                s.check_skips["rec"] += 1
                is_check = False
            if is_check:
                checking.append(s)
            elif s.step >= cfg.max_steps:
                finished.append((s, False, None))
        if checking:
            finished += self._check(checking)
        return finished

    def _nan_message(self, s: _State, rec: float, norm: float) -> str:
        return (
            f"{s.target.path or s.target.id}: NaN/inf in the optimisation at step {s.step} "
            f"(L_rec={rec}, L_norm={norm}, lambda={s.lam:.4g}); lower the learning rate "
            f"(lr={self.config.lr}) or check the model for NaN weights"
        )

    @torch.no_grad()
    def _check(self, checking: list[_State]) -> list[tuple[_State, bool, str | None]]:
        """Generate n samples from each image's N(mu, sigma^2) and test them all for being copies.

        Text-conditional models try the guidance scales in order; an image succeeds at the first scale where
        all n samples are copies. The samples come in rounds (config.check_rounds: the first 1, then up to 4,
        then all 8): an (image, scale) whose round has a non-copy stops there and the image moves to its next
        scale. Each sample depends only on its own noise and prompt draw, so the decision is the full check's,
        while a failing check, the common case, costs a fraction of the forwards. The first round runs at
        every scale, and each later round at the image's lowest scale still possible; all images' rows go
        into one batched sampler call, each row at its own scale.
        """
        cfg = self.config
        n = cfg.n_check_samples
        conditional = checking[0].cond is not None
        scales = list(cfg.guidance_scales) if conditional else [1.0]
        # eta > 0: an image's samples share one sampler stream, so they are drawn together, all n at once.
        bounds = ([b for b in sorted(set(cfg.check_rounds)) if 0 < b < n] if cfg.eta == 0 else []) + [n]
        # Each image's check noise and prompts are drawn once and used at every guidance scale.
        noise, check_cond = {}, {}
        for s in checking:
            noise[id(s)], check_cond[id(s)] = self._check_draws(s)
        # Per image, the scales still able to pass (lowest first) and the samples done at each.
        candidates = {id(s): list(range(len(scales))) for s in checking}
        done: dict[tuple[int, int], int] = {}
        sims: dict[tuple[int, int], list[float]] = {}
        samples: dict[tuple[int, int], list[torch.Tensor]] = {}
        succeeded: dict[int, int] = {}
        previews = self._preview(checking, noise, check_cond, candidates) if cfg.check_preview_steps else {}
        # With rounds, the first round runs at every scale at once: a failing check (most are) is then one
        # sampler call, not one per scale. Later rounds follow the lowest scale still possible.
        all_scales_first = len(bounds) > 1
        open_ = [s for s in checking if candidates[id(s)]]
        while open_:
            if all_scales_first:
                parts = [(s, k, 0, bounds[0]) for s in open_ for k in candidates[id(s)]]
                all_scales_first = False
            else:
                parts = []
                for s in open_:
                    k = candidates[id(s)][0]
                    lo = done.get((id(s), k), 0)
                    parts.append((s, k, lo, next(b for b in bounds if b > lo)))
            rows = [(s, k) for s, k, lo, hi in parts for _ in range(lo, hi)]
            with self._autocast():
                cond = cond_cat([cond_rows(check_cond[id(s)], slice(lo, hi)) for s, _, lo, hi in parts]) \
                    if conditional else None
                # Stochastic sampling draws each image's noise from its own generator (see generate).
                gens = [s.sampler_gen for s, _ in rows] if cfg.eta > 0 else None
                guidance = [scales[k] for _, k in rows] if conditional else 1.0
                images = self.adapter.generate(torch.cat([noise[id(s)][lo:hi] for s, _, lo, hi in parts]),
                                               steps=cfg.sampler_steps, eta=cfg.eta, cond=cond, guidance=guidance,
                                               generator=gens, schedule=cfg.check_schedule)
            images = images.float()
            offset = 0
            for s, k, lo, hi in parts:
                m = hi - lo
                batch = images[offset : offset + m].cpu()
                offset += m
                values = [round(float(v), 6) for v in self.similarity(batch, s.target.pixels)]
                s.calls["check_forward"] += m * sample_forwards(self.check_steps, conditional, scales[k],
                                                                self.guidance_kind)
                s.calls["vae_decode"] += m if self.decodes else 0
                s.calls["similarity"] += m
                sims.setdefault((id(s), k), []).extend(values)
                samples.setdefault((id(s), k), []).append(batch)
                if min(values) < cfg.beta:
                    candidates[id(s)].remove(k)
                else:
                    done[(id(s), k)] = hi
            still = []
            for s in open_:
                left = candidates[id(s)]
                if left and done.get((id(s), left[0]), 0) == n:
                    succeeded[id(s)] = left[0]  # every lower scale has failed: the first scale that passes
                elif left:
                    still.append(s)
            open_ = still
        finished = []
        for s in checking:
            if id(s) in succeeded:
                key = (id(s), succeeded[id(s)])
            else:  # the scale whose worst sample came closest; the first such scale on a tie
                if not any(key[0] == id(s) for key in sims):  # every scale dropped by the preview
                    s.check_skips["preview"] += 1
                    for key, (values, batch) in previews.items():
                        if key[0] == id(s):
                            sims[key], samples[key] = values, [batch]
                key = max((key for key in sims if key[0] == id(s)), key=lambda key: (min(sims[key]), -key[1]))
            s.similarities, s.samples = sims[key], torch.cat(samples[key])
            min_sim = min(s.similarities)
            kl = float(kl_to_standard_normal(s.mu[None], s.logvar[None])[0])
            s.checks.append([s.step, kl, s.lam, min_sim, s.prev_check_mean])
            if id(s) in succeeded:
                if conditional:
                    s.guidance_scale = scales[succeeded[id(s)]]
                finished.append((s, True, None))
            elif s.step >= cfg.max_steps:
                finished.append((s, False, None))
        return finished

    @torch.no_grad()
    def _check_draws(self, s: _State, *, encode: bool = True):
        """A check's draws from the image's streams: its n starting noises from N(mu, sigma^2) and, for a
        text-conditional model, its prompts (encoded only when `encode`)."""
        n = self.config.n_check_samples
        z = torch.randn((n, *s.x0.shape), generator=s.gen, device=s.gen.device).to(s.x0.device)
        cond = None
        if s.cond is not None:
            with self._metered(s.calls):
                cond = s.cond.for_check(n) if encode else s.cond.skip_check(n)
        return reparameterize(s.mu[None], s.logvar[None], z), cond

    def _preview(self, checking, noise, check_cond, candidates) -> dict:
        """Opt-in (config.check_preview_steps): each image's first check sample at every candidate scale with a
        short sampler, all in one call; a scale whose preview is not within the margin of beta leaves the
        candidates, so its full sampler never runs. Returns {(image, scale): ([similarity], image)} of the
        dropped scales."""
        cfg, conditional = self.config, checking[0].cond is not None
        scales = list(cfg.guidance_scales) if conditional else [1.0]
        parts = [(s, k) for s in checking for k in candidates[id(s)]]
        with self._autocast():
            cond = cond_cat([cond_rows(check_cond[id(s)], slice(0, 1)) for s, _ in parts]) if conditional else None
            images = self.adapter.generate(torch.cat([noise[id(s)][:1] for s, _ in parts]),
                                           steps=cfg.check_preview_steps, cond=cond,
                                           guidance=[scales[k] for _, k in parts] if conditional else 1.0,
                                           schedule=cfg.check_schedule)
        images = images.float().cpu()
        dropped = {}
        for s in checking:
            rows = [i for i, (t, _) in enumerate(parts) if t is s]
            values = [round(float(v), 6) for v in self.similarity(images[rows], s.target.pixels)]
            for i, v in zip(rows, values):
                k = parts[i][1]
                s.calls["check_forward"] += sample_forwards(self.preview_steps, conditional, scales[k],
                                                            self.guidance_kind)
                s.calls["vae_decode"] += 1 if self.decodes else 0
                s.calls["similarity"] += 1
                if v < cfg.beta - cfg.check_preview_margin:
                    candidates[id(s)].remove(k)
                    dropped[(id(s), k)] = ([v], images[i : i + 1])
        return dropped
