"""Random token addition (Somepalli et al., NeurIPS 2023; code: somepago/DCR, sd_mitigation.py): before encoding, n
random tokens (ids drawn uniformly among the tokenizer's non-special ones: the authors' `< 49400` for CLIP), each
decoded to text and inserted at a random word position of the caption; n = 4 (its --rand_aug_repeats). It acts on
a known caption: a sample whose prompt is inverted (soft tokens) has no words to insert between and is generated as
it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from invmm.mitigations.base import GenerationCall, Mitigation, MitigationError, sequence, with_sequence


def insert_tokens(text: str, n: int, tokenizer, generator: torch.Generator) -> str:
    """`text` with n random non-special tokens inserted, each at a random word position."""
    special = set(tokenizer.all_special_ids)
    words = text.split(" ") if text else []
    for _ in range(n):
        while True:
            token = int(torch.randint(0, tokenizer.vocab_size, (1,), generator=generator))
            if token not in special:
                break
        word = tokenizer.decode([token]).strip()
        words.insert(int(torch.randint(0, len(words) + 1, (1,), generator=generator)), word)
    return " ".join(words)


@dataclass
class RandomTokens(Mitigation):
    name: ClassVar[str] = "random-tokens"
    source: ClassVar[str] = ("Somepalli et al., NeurIPS 2023; somepago/DCR, sd_mitigation.py (4 insertions, "
                             "--rand_aug_repeats)")

    n: int = 4
    seed: int = 0

    def __post_init__(self):
        if int(self.n) < 0:
            raise MitigationError(f"random-tokens n={self.n}: must be >= 0")

    def refuse(self, adapter) -> str | None:
        why = super().refuse(adapter)
        if why is None and not getattr(adapter, "tokenizers", None):
            why = f"the {adapter.family} model has no tokenizer to draw tokens from"
        return why

    def prepare(self, call: GenerationCall) -> None:
        known = [i for i, text in enumerate(call.texts) if text is not None]
        if not known or not int(self.n):
            return
        tokenizer = call.adapter.tokenizers[0]
        texts = [insert_tokens(call.texts[i], int(self.n), tokenizer, call.generator(self.seed, self.name, i))
                 for i in known]
        encoded = sequence(call.adapter.prompt_embeddings(texts))
        seq = sequence(call.cond).clone()
        seq[known] = encoded.to(seq.device, seq.dtype)
        call.cond = with_sequence(call.cond, seq)
        call.state[self.name] = dict(zip(known, texts))
