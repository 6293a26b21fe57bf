"""Flow matching (Stable Diffusion 3 / 3.5): VAE + `SD3Transformer2DModel` + `FlowMatchEulerDiscreteScheduler`.

Forward process x_s = s * eps + (1 - s) * x0, with s one of the scheduler's (shifted) training sigmas,
drawn by index uniformly per sample. The transformer predicts the velocity v ~ eps - x0, so
x0_hat = x_s - s * v. The success check samples with the scheduler's Euler steps from s = 1.

Conditioning follows the SD3 pipeline: the penultimate hidden states of CLIP-L and CLIP-G, concatenated
on features and zero-padded to the joint attention width, then the T5 states (zeros when the model was
loaded without T5) appended on the sequence; the pooled vectors of both CLIP encoders concatenated.
Prompt inversion replaces 75 tokens of CLIP-L only; CLIP-G and T5 keep the caption, as the reference does.
"""

from __future__ import annotations

import copy

import torch

from invmm.adapters.codecs import CodecImages, VAECodec, check_resolution
from invmm.adapters.text2image import encode_soft_tokens, full_length_ids, tokenize
from invmm.conditioning import classifier_free_guidance
from invmm.functional import x0_from_flow_velocity

# The authors invert SD3.5 at 512 x 512 (latent 16 x 64 x 64), not at its native 1024: models whose native
# side is larger are measured at this side unless the user asks for another.
PAPER_RESOLUTION = 512


class FlowMatching(CodecImages):
    """What SD3 and Flux share: the forward process over the training sigmas `self.sigmas` (drawn by index) and
    the Euler check on the scheduler of the subclass's `sampler()`."""

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.sigmas), (n,), generator=generator, device=generator.device)

    def _sigma(self, idx: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.sigmas[idx.to(self.device)].reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        s = self._sigma(idx, x0.ndim)
        return s * eps + (1.0 - s) * x0

    def _euler(self, schedule: str):
        """A fresh Euler scheduler of the model's config: a copy of one built once, at load time (see
        pixel.PixelAdapter.sampler for why)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if schedule != "model":
            raise ValueError(f"flow matching checks use the model's Euler grid; got check schedule {schedule!r}")
        if getattr(self, "_euler_template", None) is None:  # the first call comes from the subclass's __init__
            self._euler_template = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        return copy.deepcopy(self._euler_template)

    def check_timesteps(self, steps: int, schedule: str = "model") -> list[float]:
        return [round(float(t), 3) for t in self.sampler(steps, schedule).timesteps]

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, *, steps: int, eta: float = 0.0, cond=None,
                 guidance: float | list[float] = 1.0,
                 generator: torch.Generator | None = None, schedule: str = "model") -> torch.Tensor:
        if eta:
            raise ValueError("the flow-matching Euler sampler is deterministic; eta must be 0")
        scheduler = self.sampler(steps, schedule)
        x = noise.to(self.device, torch.float32)
        for t in scheduler.timesteps:
            x = scheduler.step(self.guided_output(x, t.expand(len(x)), cond, guidance), t, x).prev_sample
        return self.decode(x)

    def uncond_embeddings(self, n: int):
        return tuple(c.expand(n, *c.shape[1:]) for c in self._uncond)


class FlowAdapter(FlowMatching):
    family = "flow"
    # The authors' SD3 code draws the VAE posterior (sd3_impls' SDVAE.encode adds std * randn).
    vae_posterior = "sample"
    conditional = True
    capabilities = frozenset({"text"})
    # The authors' SD3 check gives each of its samples its own Gumbel-softmax draw of the soft prompt.
    check_prompt_draws = "per_sample"

    def __init__(self, transformer, vae, text_encoders, tokenizers, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", max_sequence_length: int = 256,
                 resolution: int | None = None, vae_saved_config: dict | None = None,
                 latent_scale: float | None = None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.device = torch.device(device)
        self.transformer = transformer.to(self.device).eval().requires_grad_(False)
        self.codec = VAECodec(vae, self.device, saved_config=vae_saved_config, latent_scale=latent_scale,
                              posterior=self.vae_posterior)
        self.vae = self.codec.vae
        self.text_encoders = [e.to(self.device).eval().requires_grad_(False) if e is not None else None
                              for e in text_encoders]
        self.tokenizers = list(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.max_sequence_length = max_sequence_length
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        # Training sigmas (shifted as the model was trained) and the matching model timesteps.
        self.sigmas = scheduler.sigmas[: len(scheduler.timesteps)].to(self.device, torch.float32)
        self.timesteps = scheduler.timesteps.to(self.device, torch.float32)
        self.channels = int(self.transformer.config.in_channels)
        self.image_mode = self.codec.image_mode
        self.native_resolution = int(self.transformer.config.sample_size) * self.codec.factor
        if resolution is None:
            resolution = min(self.native_resolution, PAPER_RESOLUTION)
        self.image_size = check_resolution(resolution, self.native_resolution,
                                           self.codec.factor * int(self.transformer.config.patch_size))
        self.source = source
        clip_l = self.text_encoders[0]
        self.soft_tokenizer = self.tokenizers[0]
        self.max_length = int(self.tokenizers[0].model_max_length)
        self.n_soft_tokens = self.max_length - 2
        self.vocab_size = int(clip_l.get_input_embeddings().weight.shape[0])
        # A full-length prompt, so that CLIP-L's pooled vector (half of the pooled projection) sees all 75 learned
        # tokens; the authors pool at the caption's end token, which sees those before it (README, deviations).
        self._soft_ids = full_length_ids(self.tokenizers[0], self.max_length, self.device)
        self._uncond = self.prompt_embeddings([""])

    # --- forward process and x0 ---
    def _velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        embeds, pooled = cond if cond is not None else self.uncond_embeddings(len(x))
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=timestep.to(self.device)).sample

    def predict_x0(self, x_t: torch.Tensor, idx: torch.Tensor, cond=None) -> torch.Tensor:
        v = self._velocity(x_t, self.timesteps[idx.to(self.device)], cond)
        return x0_from_flow_velocity(v, x_t, self._sigma(idx, x_t.ndim))

    def guided_output(self, x: torch.Tensor, t: torch.Tensor, cond=None,
                      guidance: float | list[float] = 1.0) -> torch.Tensor:
        """The velocity at model timesteps t (not training indices), with classifier-free guidance."""
        return classifier_free_guidance(self._velocity, x, t, cond, self.uncond_embeddings(len(x)), guidance)

    def sampler(self, steps: int, schedule: str = "model"):
        scheduler = self._euler(schedule)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    # --- text conditioning ---
    def _tokenize(self, k: int, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        tok = self.tokenizers[k]
        return tokenize(tok, texts, max_length or int(tok.model_max_length), self.device)["input_ids"]

    def _clip(self, k: int, texts: list[str]):
        out = self.text_encoders[k](self._tokenize(k, texts), output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    def _t5(self, texts: list[str]) -> torch.Tensor:
        width = int(self.transformer.config.joint_attention_dim)
        if self.text_encoders[2] is None:
            return torch.zeros(len(texts), self.max_sequence_length, width, device=self.device)
        return self.text_encoders[2](self._tokenize(2, texts, self.max_sequence_length))[0]

    def _join(self, l_hidden, l_pooled, g_hidden, g_pooled, t5):
        clip = torch.cat([l_hidden, g_hidden], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat([l_pooled, g_pooled], dim=-1)

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str]):
        return self._join(*self._clip(0, texts), *self._clip(1, texts), self._t5(texts))

    @torch.no_grad()
    def soft_prompt_context(self, caption: str):
        """CLIP-G and T5 keep the caption while CLIP-L's tokens are inverted."""
        g_hidden, g_pooled = self._clip(1, [caption])
        return g_hidden, g_pooled, self._t5([caption])

    def soft_prompt_embeddings(self, probs: torch.Tensor, context):
        out = encode_soft_tokens(self.text_encoders[0], self._soft_ids, probs, output_hidden_states=True)
        n = len(probs)
        g_hidden, g_pooled, t5 = (c.expand(n, *c.shape[1:]) for c in context)
        return self._join(out.hidden_states[-2], out[0], g_hidden, g_pooled, t5)

    def describe(self) -> dict:
        return {
            "family": self.family, "source": self.source, "transformer_class": type(self.transformer).__name__,
            "resolution": self.image_size, "native_resolution": self.native_resolution,
            "latent_channels": self.channels, **self.codec.describe(),
            "t5": self.text_encoders[2] is not None, "vocab_size": self.vocab_size,
            "scheduler_class": self.scheduler_config.get("_class_name"),
            "shift": self.scheduler_config.get("shift"),
            **({"loras": self.loras} if getattr(self, "loras", None) else {}),
        }
