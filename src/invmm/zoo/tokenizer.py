"""An offline CLIP tokenizer over the byte-level alphabet alone (no merges): every character is a token.

Real CLIP vocabularies cannot be downloaded here; this one has CLIP's exact format and special tokens,
so the toy text-to-image model and the tests exercise the same tokenizer class Stable Diffusion uses.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol also with the end-of-word mark, plus the two specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def build_clip_tokenizer(model_max_length: int = 77):
    """The tokenizer object; save it with `save_pretrained` (the vocabulary files are only read here)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "vocab.json").write_text(json.dumps(byte_level_vocab()))
        (workdir / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab=str(workdir / "vocab.json"), merges=str(workdir / "merges.txt"),
                             model_max_length=model_max_length)
