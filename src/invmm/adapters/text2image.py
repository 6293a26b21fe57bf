"""Text-to-image latent diffusion (Stable Diffusion 1.x / 2.x): VAE + `UNet2DConditionModel` + CLIP text encoder.

Without a VAE the same model runs in pixel space (as the toy text-to-image model in the zoo does).

The forward process, x0 conversion and DDIM sampler are those of pixel.py (through a VAE codec, or in pixel
space); this file adds the text conditioning: fixed prompt embeddings, soft prompts (token-embedding
mixtures substituted for positions 1..L-2 of the tokenized empty prompt, the start token and the last
position kept), and classifier-free guidance against the empty prompt for the success check.
"""

from __future__ import annotations

import torch

from invmm.adapters.codecs import VAECodec
from invmm.adapters.pixel import PixelAdapter


class Text2ImageAdapter(PixelAdapter):
    family = "text2image"
    # The authors' SD 1.x/2.x inversion scripts override get_first_stage_encoding to take the posterior's mode.
    vae_posterior = "mode"
    conditional = True
    capabilities = frozenset({"noise_schedule", "text"})
    # The authors' SD 1.x check draws one soft prompt and gives it to all samples at every guidance scale.
    check_prompt_draws = "shared"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", resolution: int | None = None,
                 vae_saved_config: dict | None = None, latent_scale: float | None = None):
        codec = None  # without a VAE, pixel space
        if vae is not None:
            codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                             posterior=self.vae_posterior)
        super().__init__(unet, scheduler_config, device=device, source=source, resolution=resolution, codec=codec)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.soft_tokenizer = tokenizer  # the one prompt inversion learns tokens of
        self.max_length = int(tokenizer.model_max_length)
        self.n_soft_tokens = self.max_length - 2
        self.token_embedding = self.text_encoder.get_input_embeddings()
        self.vocab_size = int(self.token_embedding.weight.shape[0])
        self._empty_ids = self.tokenize([""])
        self._uncond = self.prompt_embeddings([""])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts, self.max_length, self.device)["input_ids"]

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.tokenize(texts))[0]

    def uncond_embeddings(self, n: int) -> torch.Tensor:
        return self._uncond.expand(n, -1, -1)

    def soft_prompt_context(self, caption: str):
        return None  # SD 1.x/2.x have one text encoder, and it is the one inverted

    def soft_prompt_embeddings(self, probs: torch.Tensor, context=None) -> torch.Tensor:
        """Encode [n, L-2, V] token distributions: their embedding mixtures replace positions 1..L-2."""
        return encode_soft_tokens(self.text_encoder, self._empty_ids, probs)[0]

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = self.uncond_embeddings(len(x_t))
        out = self.unet(x_t, t.to(self.device), encoder_hidden_states=cond).sample
        return out[:, : self.channels]

    def describe(self) -> dict:
        d = super().describe()
        d.update(text_encoder_class=type(self.text_encoder).__name__, vocab_size=self.vocab_size,
                 max_length=self.max_length)
        return d


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
