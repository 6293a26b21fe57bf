"""One optimisation step of InvMM for a batch of images, each on its own distribution and streams.

Per image: B noises eps = mu + sigma z and timesteps t from its own generator, x_t from the forward process, the
model's x0_hat, and the loss L_rec + lambda L_norm (L_norm the KL to N(0, I)); Adam updates mu, log-variance (and
a learned conditioning's logits); lambda follows the paper's schedule, which also says when a check falls due.
"""

from __future__ import annotations

import math

import torch

from invmm.families.conditions import cond_cat
from invmm.functional import kl_to_standard_normal, reparameterize, update_lambda
from invmm.inversion.state import ImageState


class OptimisationStep:
    def __init__(self, inverter):
        self.inv = inverter  # the adapter, config, meter, autocast and the check's draws (for a skipped check)

    def __call__(self, active: list[ImageState]) -> tuple[list[tuple[ImageState, bool, str | None]],
                                                         list[ImageState]]:
        """One step for every active image: (the images that finish now, with (success, error); those whose
        check falls due)."""
        rec, norm = self._backward(active)
        cfg = self.inv.config
        finished, checking = [], []
        for s, r, n in zip(active, rec, norm):
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
                # Opt-in: no sampling while the fit is still far from what reproduced images reach. The check's
                # random draws are still taken, so the fit goes on exactly as with the check.
                self.inv.check.draws(s, encode=False)
                s.check_skips["rec"] += 1
                is_check = False
            if is_check:
                checking.append(s)
            elif s.step >= cfg.max_steps:  # a refining image too: no check after the budget exists for the paper
                finished.append((s, False, None))
        return finished, checking

    def _backward(self, active: list[ImageState]) -> tuple[list[float], list[float]]:
        """The batched forward and backward of every image's loss; returns each image's L_rec and L_norm."""
        inv, cfg, adapter = self.inv, self.inv.config, self.inv.adapter
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
        with inv.autocast():
            cond = None
            if active[0].cond is not None:
                parts = []
                for s in active:
                    with inv.meter.metered(s.calls):
                        parts.append(s.cond.sample(b, s.gen))
                cond = cond_cat(parts)
            x0_hat = adapter.predict_x0(x_t, t.reshape(-1), cond)
        for s in active:  # every row of the optimisation's forward is backpropagated
            s.calls["opt_forward"] += b
            s.calls["opt_backward"] += b
        err = (x0_hat.float() - x0_rep).pow(2)
        rec = err.flatten(1).mean(1).view(len(active), b).mean(1)
        if any(s.loss_weight is not None for s in active):
            rec = torch.stack([r if s.loss_weight is None else self._weighted(err[i * b : (i + 1) * b], s.loss_weight)
                               for i, (s, r) in enumerate(zip(active, rec))])
        norm = kl_to_standard_normal(mu, logvar)
        lam = torch.tensor([s.lam for s in active], device=device)
        for s in active:
            s.opt.zero_grad(set_to_none=True)
        (rec + lam * norm).sum().backward()
        return rec.detach().cpu().tolist(), norm.detach().cpu().tolist()

    @staticmethod
    def _weighted(err: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """An image's L_rec over its mask: the squared error's mean weighted by the mask on x0's grid (the same
        weight for every channel), over its B rows."""
        w = weight.expand_as(err[0])
        return (err * w).flatten(1).sum(1).mean() / w.sum()

    def _nan_message(self, s: ImageState, rec: float, norm: float) -> str:
        return (
            f"{s.target.path or s.target.id}: NaN/inf in the optimisation at step {s.step} "
            f"(L_rec={rec}, L_norm={norm}, lambda={s.lam:.4g}); lower the learning rate "
            f"(lr={self.inv.config.lr}) or check the model for NaN weights"
        )
