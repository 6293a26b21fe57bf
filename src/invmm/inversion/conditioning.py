"""What a text-conditional model is conditioned on while InvMM inverts an image.

`KnownPrompt`: the training caption, fixed. `SoftPrompt`: the measure's adversarial default, which also
learns a distribution over prompts: per token position, logits over the whole text-encoder vocabulary;
every noise sample draws its own relaxed one-hot per position (Gumbel-softmax), and the token
embeddings are the matching mixture of the encoder's embedding rows.
"""

from __future__ import annotations

import torch

from invmm.families.conditions import cond_expand
from invmm.functional import gumbel_noise, gumbel_softmax_sample


def conditioner(adapter, given: str | None, *, invert_prompt: bool, tau: float, seed: int = 0,
                original_size: tuple[int, int] | None = None):
    """What a conditional model is conditioned on while one image is inverted: `given` is the image's caption,
    or for a class-conditional model its class label. `original_size`: the (width, height) of the image's file,
    for models conditioned on it (SDXL)."""
    if "class" in adapter.capabilities:
        return SoftClass(adapter, tau, seed) if invert_prompt else KnownClass(adapter, given)
    sized = _size_kwargs(adapter, original_size)
    if invert_prompt:
        return SoftPrompt(adapter, tau, given, seed, **sized)
    return KnownPrompt(adapter, given or "", **sized)


def _size_kwargs(adapter, original_size) -> dict:
    return {"original_size": original_size} if adapter.size_conditioned else {}


def check_class_labels(adapter, items) -> None:
    """Mark (as the item's input error) every image whose class a class-conditional model does not have, so a
    typo in a manifest fails that image with its row's message instead of the run."""
    if "class" not in adapter.capabilities:
        return
    for it in items:
        if it.class_label is not None and not it.error:
            try:
                adapter.class_id(it.class_label)
            except ValueError as exc:
                it.error = f"{it.path}: {exc}"


def given_condition(item, adapter) -> str | None:
    """An image's conditioning as the data gives it: its class label for a class-conditional model, else its
    caption (an ImageItem or a Target)."""
    return item.class_label if "class" in adapter.capabilities else item.caption


class _Fixed:
    """A conditioning that is given, not learned: the same `embedding` for every sample, nothing drawn."""

    embedding = None
    params: list[torch.Tensor] = []

    def sample(self, n: int, generator: torch.Generator):
        return cond_expand(self.embedding, n)

    def for_check(self, n: int):
        return cond_expand(self.embedding, n)

    def skip_check(self, n: int) -> None:
        """A skipped check draws nothing here (see _Relaxed.skip_check)."""

    def snapshot(self):
        return None

    def check_at(self, n: int, logits, generator: torch.Generator):
        return cond_expand(self.embedding, n)


class _Relaxed:
    """A learned distribution over discrete choices (tokens per position, or classes): logits learned with mu and
    logvar; every noise sample draws its own relaxed one-hot (Gumbel-softmax) from the image's own stream, on
    the model's device (see functional.gumbel_noise), and `_encode` turns draws into the model's conditioning."""

    def __init__(self, adapter, tau: float, seed: int, shape: tuple[int, ...]):
        self.adapter = adapter
        self.tau = tau
        self.gen = torch.Generator(device=adapter.device).manual_seed(seed)
        self.logits = torch.zeros(*shape, device=adapter.device, requires_grad=True)
        self.params = [self.logits]

    def _encode(self, probs: torch.Tensor):
        raise NotImplementedError

    def _check_draws(self, n: int) -> int:
        return n if self.adapter.check_prompt_draws == "per_sample" else 1

    def _draw(self, n: int):
        g = gumbel_noise((n, *self.logits.shape), self.gen)
        return self._encode(gumbel_softmax_sample(self.logits, g, self.tau))

    def sample(self, n: int, generator: torch.Generator):
        return self._draw(n)

    def for_check(self, n: int):
        """The conditionings of an n-sample success check: Gumbel-softmax draws, as the authors' check takes them
        (not the mean mixture softmax(logits / tau)), from the same stream as the optimisation's draws.
        One draw shared by all samples, or one per sample, as the adapter's family does it."""
        return cond_expand(self._draw(self._check_draws(n)), n)

    def skip_check(self, n: int) -> None:
        """Consume for_check's Gumbel draws without encoding them: a check skipped by an opt-in shortcut then
        leaves the optimisation's draws exactly as the full check would."""
        gumbel_noise((self._check_draws(n), *self.logits.shape), self.gen)

    def snapshot(self) -> torch.Tensor:
        """The logits as they are now, for a later check of this step's distribution (inversion/refine.py)."""
        return self.logits.detach().clone()

    def check_at(self, n: int, logits: torch.Tensor, generator: torch.Generator):
        """for_check's conditionings for a snapshot's logits, drawn from another stream than the image's."""
        g = gumbel_noise((self._check_draws(n), *logits.shape), generator)
        return cond_expand(self._encode(gumbel_softmax_sample(logits, g, self.tau)), n)


class KnownPrompt(_Fixed):
    def __init__(self, adapter, text: str, **size):
        self.text = text
        # [1, L, D] (or a tuple, e.g. with pooled vectors; SDXL's with the image's size conditioning)
        self.embedding = adapter.prompt_embeddings([text], **size)

    def describe(self) -> dict:
        return {"prompt_mode": "caption", "prompt": self.text}


class SoftPrompt(_Relaxed):
    """Per token position, logits over the whole text-encoder vocabulary; the token embeddings are the
    mixture of the encoder's embedding rows under each draw."""

    def __init__(self, adapter, tau: float, caption: str | None = None, seed: int = 0, **size):
        super().__init__(adapter, tau, seed, (adapter.n_soft_tokens, adapter.vocab_size))
        self.caption = caption
        # What is not inverted (SD3: the large text encoders, which keep the caption) is computed once.
        self.context = adapter.soft_prompt_context(caption or "", **size)

    def _encode(self, probs: torch.Tensor):
        return self.adapter.soft_prompt_embeddings(probs, self.context)

    def describe(self) -> dict:
        ids = self.logits.argmax(-1).tolist()
        return {"prompt_mode": "inverted",
                "prompt": self.adapter.soft_tokenizer.decode(ids, skip_special_tokens=True).strip()}


class KnownClass(_Fixed):
    def __init__(self, adapter, label: str | None):
        if label in (None, ""):
            raise ValueError("class-conditional model: give the image's class (a 'class' column in the manifest, or "
                             "--class-label), or invert the class (--invert-prompt)")
        self.label = adapter.class_id(label)
        self.name = adapter.class_name(self.label)
        self.embedding = adapter.prompt_embeddings([self.label])

    def describe(self) -> dict:
        return {"class_mode": "known", "class_label": self.label, "class_name": self.name}


class SoftClass(_Relaxed):
    """Class inversion, the analogue of prompt inversion: logits over the model's classes; the model sees the
    mixture of its class embeddings under each draw. The result records the class of the largest logit."""

    def __init__(self, adapter, tau: float, seed: int = 0):
        super().__init__(adapter, tau, seed, (adapter.num_classes,))

    def _encode(self, probs: torch.Tensor):
        return self.adapter.soft_class_conditioning(probs)

    def describe(self) -> dict:
        k = int(self.logits.argmax())
        return {"class_mode": "inverted", "class_label": k, "class_name": self.adapter.class_name(k)}
