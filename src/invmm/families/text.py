"""Text encoders as the pipelines call them, and soft prompts through them: the helpers every text family uses."""

from __future__ import annotations

import torch


def tokenize(tokenizer, texts: list[str], length: int, device, **kwargs) -> dict[str, torch.Tensor]:
    """The tokenizer's ids (and attention mask), padded and truncated to `length`, made on `device` (a tokenizer's
    own "pt" tensors would be made on the default device, not the model's)."""
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True, **kwargs)
    return {key: torch.tensor(enc[key], dtype=torch.long, device=device)
            for key in ("input_ids", "attention_mask") if key in enc}


def full_length_ids(tokenizer, length: int, device) -> torch.Tensor:
    """[1, length] ids of a prompt that fills every position: the start token, fillers, the end token last. A soft
    prompt substituted into positions 1..length-2 is then a full-length prompt, and CLIP pools at its end token
    (the first end token, or the highest id for configs with the legacy eos_token_id 2), which sees every
    learned position. With the empty prompt's ids it would pool at position 1 and see only the first one. The
    fillers are never embedded: the mixtures replace them."""
    return torch.tensor([[tokenizer.bos_token_id] * (length - 1) + [tokenizer.eos_token_id]], device=device)


def encode_soft_tokens(text_encoder, empty_ids: torch.Tensor, probs: torch.Tensor, **kwargs):
    """Run a CLIP text encoder with positions 1..1+k of the tokenized empty prompt replaced by the
    embedding mixtures of [n, k, V] token distributions; returns the encoder's output."""
    table = text_encoder.get_input_embeddings()
    soft = probs.to(table.weight.dtype) @ table.weight

    def substitute(module, inputs, output):
        return torch.cat([output[:, :1], soft, output[:, 1 + soft.shape[1]:]], dim=1)

    # A hook on the token embedding keeps the rest of the encoder (positions, causal mask, final norm)
    # exactly as the library runs it.
    handle = table.register_forward_hook(substitute)
    try:
        return text_encoder(empty_ids.expand(len(soft), -1), **kwargs)
    finally:
        handle.remove()
