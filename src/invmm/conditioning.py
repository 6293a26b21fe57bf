"""What a text-conditional model is conditioned on while InvMM inverts an image.

`KnownPrompt`: the training caption, fixed. `SoftPrompt`: the measure's adversarial default, which also
learns a distribution over prompts: per token position, logits over the whole text-encoder vocabulary;
every noise sample draws its own relaxed one-hot per position (Gumbel-softmax), and the token
embeddings are the matching mixture of the encoder's embedding rows.
"""

from __future__ import annotations

import torch

from invmm.functional import gumbel_noise, gumbel_softmax_sample


class KnownPrompt:
    def __init__(self, adapter, text: str):
        self.text = text
        self.embedding = adapter.prompt_embeddings([text])  # [1, L, D]
        self.params: list[torch.Tensor] = []

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.embedding.expand(n, -1, -1)

    def for_check(self) -> torch.Tensor:
        return self.embedding

    def describe(self) -> dict:
        return {"prompt_mode": "caption", "prompt": self.text}


class SoftPrompt:
    def __init__(self, adapter, tau: float):
        self.adapter = adapter
        self.tau = tau
        self.logits = torch.zeros(adapter.n_soft_tokens, adapter.vocab_size, device=adapter.device,
                                  requires_grad=True)
        self.params = [self.logits]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        g = gumbel_noise((n, *self.logits.shape), generator).to(self.logits.device)
        return self.adapter.soft_prompt_embeddings(gumbel_softmax_sample(self.logits, g, self.tau))

    def for_check(self) -> torch.Tensor:
        # The check uses the distribution's mean mixture, not one noisy draw.
        return self.adapter.soft_prompt_embeddings(torch.softmax(self.logits / self.tau, dim=-1)[None])

    def describe(self) -> dict:
        return {"prompt_mode": "inverted", "prompt": self.adapter.decode_tokens(self.logits.argmax(-1).tolist())}
