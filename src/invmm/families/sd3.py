"""Stable Diffusion 3 / 3.5: VAE + `SD3Transformer2DModel` + `FlowMatchEulerDiscreteScheduler` (the paper's `sd3`).

The forward process, x0 and the Euler check are flow_matching.py's, with the scheduler's (shifted) training
sigmas.

Conditioning follows the SD3 pipeline: the penultimate hidden states of CLIP-L and CLIP-G, concatenated
on features and zero-padded to the joint attention width, then the T5 states (zeros when the model was
loaded without T5) appended on the sequence; the pooled vectors of both CLIP encoders concatenated.
Prompt inversion replaces 75 tokens of CLIP-L only; CLIP-G and T5 keep the caption, as the reference does.
"""

from __future__ import annotations

import torch

from invmm.families.base import TEXT, Family, LoraFormat, ModelFolder
from invmm.families.codecs import VAECodec, check_resolution
from invmm.families.conditions import classifier_free_guidance, guidance_pair
from invmm.families.flow_matching import PAPER_RESOLUTION, FlowMatching
from invmm.families.loading import build, load_component, load_tokenizers, load_vae, require
from invmm.families.lora import fetch_options, load_text_encoder_loras, save_pipeline_lora, state_tensors
from invmm.families.text import encode_soft_tokens, full_length_ids, tokenize
from invmm.functional import x0_from_flow_velocity
from invmm.zoo.tiny import build_tiny_sd3

# The paper's SD3 setting: B = 16, lambda growing 10x faster, the model's Euler grid of 50 steps, guidance 1..5.
PRESET = {
    "delta": 1e-3,
    "batch_size": 16,
    "sampler": "euler",
    "sampler_steps": 50,
    "check_schedule": "model",
    "guidance_scales": [1.0, 2.0, 3.0, 4.0, 5.0],
    "sscd_resize": 320,
}


class SD3Adapter(FlowMatching):
    family = "sd3"
    # The authors' SD3 code draws the VAE posterior (sd3_impls' SDVAE.encode adds std * randn).
    vae_posterior = "sample"
    conditional = True
    capabilities = frozenset({TEXT})
    # The authors' SD3 check gives each of its samples its own Gumbel-softmax draw of the soft prompt.
    check_prompt_draws = "per_sample"

    def __init__(self, transformer, vae, text_encoders, tokenizers, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", max_sequence_length: int = 256,
                 resolution: int | None = None, vae_saved_config: dict | None = None,
                 latent_scale: float | None = None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.device = torch.device(device)
        self.denoiser = transformer.to(self.device).eval().requires_grad_(False)
        self.codec = VAECodec(vae, self.device, saved_config=vae_saved_config, latent_scale=latent_scale,
                              posterior=self.vae_posterior)
        self.vae = self.codec.vae
        self.text_encoders = tuple(e.to(self.device).eval().requires_grad_(False) if e is not None else None
                                   for e in text_encoders)
        self.tokenizers = tuple(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.max_sequence_length = max_sequence_length
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        # Training sigmas (shifted as the model was trained) and the matching model timesteps.
        self.sigmas = scheduler.sigmas[: len(scheduler.timesteps)].to(self.device, torch.float32)
        self.timesteps = scheduler.timesteps.to(self.device, torch.float32)
        self.channels = int(self.denoiser.config.in_channels)
        self.image_mode = self.codec.image_mode
        self.native_resolution = int(self.denoiser.config.sample_size) * self.codec.factor
        if resolution is None:
            resolution = min(self.native_resolution, PAPER_RESOLUTION)
        self.image_size = check_resolution(resolution, self.native_resolution,
                                           self.codec.factor * int(self.denoiser.config.patch_size))
        self.source = source
        clip_l = self.text_encoders[0]
        self.soft_tokenizer = self.tokenizers[0]
        self.max_length = int(self.tokenizers[0].model_max_length)
        self.n_soft_tokens = self.max_length - 2
        self.vocab_size = int(clip_l.get_input_embeddings().weight.shape[0])
        # A full-length prompt, so that CLIP-L's pooled vector (half of the pooled projection) sees all 75 learned
        # tokens; the authors pool at the caption's end token, which sees those before it (docs/conformance.md).
        self._soft_ids = full_length_ids(self.tokenizers[0], self.max_length, self.device)
        self._uncond = self.prompt_embeddings([""])

    # --- forward process and x0 ---
    def _velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
        embeds, pooled = cond if cond is not None else self.uncond_embeddings(len(x))
        return self.denoiser(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=timestep.to(self.device)).sample

    def predict_x0(self, x_t: torch.Tensor, idx: torch.Tensor, cond=None) -> torch.Tensor:
        v = self._velocity(x_t, self.timesteps[idx.to(self.device)], cond)
        return x0_from_flow_velocity(v, x_t, self._sigma(idx, x_t.ndim))

    def guided_output(self, x: torch.Tensor, t: torch.Tensor, cond=None,
                      guidance: float | list[float] = 1.0) -> torch.Tensor:
        """The velocity at model timesteps t (not training indices), with classifier-free guidance."""
        uncond = None if cond is None else self.unconditional_rows(cond, len(x))
        return classifier_free_guidance(self._velocity, x, t, cond, uncond, guidance)

    def guidance_pair(self, x: torch.Tensor, t: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        return guidance_pair(self._velocity, x, t, cond, self.unconditional_rows(cond, len(x)))

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
        width = int(self.denoiser.config.joint_attention_dim)
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
            "family": self.family, "source": self.source, "transformer_class": type(self.denoiser).__name__,
            "resolution": self.image_size, "native_resolution": self.native_resolution,
            "latent_channels": self.channels, **self.codec.describe(),
            "t5": self.text_encoders[2] is not None, "vocab_size": self.vocab_size,
            "scheduler_class": self.scheduler_config.get("_class_name"),
            "shift": self.scheduler_config.get("shift"),
            **({"loras": list(self.loras)} if self.loras else {}),
        }


def detect(folder: ModelFolder) -> bool:
    return (folder.transformer or {}).get("_class_name") == "SD3Transformer2DModel"


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers
    import transformers

    root = folder.root
    require(root, folder.listing, "an SD3 model", ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    transformer = load_component(diffusers.SD3Transformer2DModel, root / "transformer", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)
    encoders = [
        load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder", allow_pickle, root),
        load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder_2", allow_pickle, root),
        None,
    ]
    tokenizers = load_tokenizers(root, {"tokenizer": transformers.CLIPTokenizer,
                                        "tokenizer_2": transformers.CLIPTokenizer}) + [None]
    # T5 is optional: SD3 runs (slightly worse) without it, and it is 4.7B parameters.
    if folder.has("text_encoder_3"):
        encoders[2] = load_component(transformers.T5EncoderModel, root / "text_encoder_3", allow_pickle, root)
        tokenizers[2] = load_tokenizers(root, {"tokenizer_3": transformers.AutoTokenizer})[0]
    return build(SD3Adapter, root, transformer, vae, encoders, tokenizers, folder.scheduler_config, device=device,
                 source=source, resolution=resolution, latent_scale=latent_scale, vae_saved_config=vae_saved)


def load_lora(components: dict, f, name: str) -> int:
    from diffusers import StableDiffusion3Pipeline as Loader

    state = Loader.lora_state_dict(str(f.parent), **fetch_options(f))
    Loader.load_lora_into_transformer(state, components["denoiser"], adapter_name=name)
    load_text_encoder_loras(Loader, state, None, components, name)
    return state_tensors(state)


def save_lora(components: dict, out, layers: dict, adapter_name: str):
    from diffusers import StableDiffusion3Pipeline

    return save_pipeline_lora(StableDiffusion3Pipeline, out, layers, denoiser="transformer")


FAMILY = Family(
    name="sd3", folder="`transformer` (SD3Transformer2DModel) + CLIP-L/G [+ T5] + `vae`", detect=detect, load=load,
    presets={"sd3": PRESET}, sampler="euler", lora=LoraFormat(load=load_lora, save=save_lora),
    tiny=build_tiny_sd3, tiny_variants={"sd3": {}},
)
