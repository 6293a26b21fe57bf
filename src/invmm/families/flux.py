"""Flux.1 ("dev" and "schnell"): VAE (16 latent channels) + `FluxTransformer2DModel` +
`FlowMatchEulerDiscreteScheduler`, conditioned on CLIP-L's pooled vector and T5's hidden states, as
`FluxPipeline` builds them.

x0 lives in the unpacked latent space [C, H, W] (a Gaussian per latent element, as for SD3); the transformer
sees 2 x 2 latent patches packed into a sequence [(H/2)(W/2), 4C], with position ids (0, row, col) per patch
and zeros per text token, so every call packs its input and unpacks the velocity. Forward process
x_s = s * eps + (1 - s) * x0 and x0_hat = x_s - s * v, with the transformer given s (its timestep / 1000).

Sigmas: FluxPipeline samples on sigmas linspace(1, 1/N, N), shifted by the scheduler; with dynamic shifting
(dev) the shift mu depends on the image sequence length (linear in it between the scheduler config's base and
max lengths). The training sigmas here are that same grid at N = num_train_timesteps at the measured
resolution: the pipeline's own notion of the noise levels for an image of this size.

Guidance: "dev" is guidance-distilled and takes the guidance scale as an input (`guidance_kind = "embedded"`),
"schnell" takes none (`"none"`); either way one forward per sample, never an unconditional pass. The
optimisation (predict_x0) runs dev at guidance 1, the conditional output the distillation started from.

Prompt inversion learns CLIP-L's 75 tokens while T5 keeps the caption (as sd3.py does for SD3). CLIP-L
contributes only its pooled vector, which CLIP reads at the first end-of-text token: the soft tokens are
therefore placed as a full-length prompt ([BOS] + 75 tokens + [EOS]), so that the pooled vector attends to
every one of them (in the tokenized empty prompt the end token sits right after BOS, and only the first
soft token would count).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from invmm.families import sd3
from invmm.families.base import TEXT, Family, LoraFormat, ModelFolder
from invmm.families.codecs import VAECodec, check_resolution
from invmm.families.flow_matching import PAPER_RESOLUTION, FlowMatching
from invmm.families.loading import build, load_component, load_tokenizers, load_vae, require
from invmm.families.lora import fetch_options, load_text_encoder_loras, save_pipeline_lora, state_tensors
from invmm.families.text import encode_soft_tokens, full_length_ids, tokenize
from invmm.functional import x0_from_flow_velocity
from invmm.zoo.tiny import build_tiny_flux

# T5 tokens: FluxPipeline's default 512; schnell was trained with 256 (the Black Forest Labs reference code and
# diffusers' Flux documentation run it so). A tokenizer declaring a shorter maximum caps both.
T5_TOKENS = {"embedded": 512, "none": 256}


def image_shift(seq_len: int, config: dict) -> float:
    """FluxPipeline's mu: linear in the packed image sequence length, base_shift at base_image_seq_len and
    max_shift at max_image_seq_len (the scheduler config's values, else the pipeline's defaults)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    return base + (top - base) * (seq_len - base_len) / (max_len - base_len)


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: each 2 x 2 patch one token, its features channel-major."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, f = x.shape
    return x.reshape(b, h // 2, w // 2, f // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, f // 4, h, w)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    """Rotary position ids of the packed patches: (0, row, col), row-major."""
    rows, cols = torch.meshgrid(torch.arange(h // 2, device=device), torch.arange(w // 2, device=device), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(device, torch.float32)


class FluxAdapter(FlowMatching):
    family = "flux"
    # No paper setting: as the `sd3` preset it takes (the authors' SD3 code draws the posterior) and Flux's own
    # training scripts, one draw.
    vae_posterior = "sample"
    conditional = True
    capabilities = frozenset({TEXT})
    # No authors' setting for Flux: the SD3 check's (each sample its own Gumbel-softmax draw of the soft prompt).
    check_prompt_draws = "per_sample"
    train_guidance = 1.0

    @property
    def preset(self) -> str:
        """dev takes the `flux` preset; schnell, distilled for a few steps without a guidance input, its own."""
        return "flux" if self.guidance_kind == "embedded" else "flux-schnell"

    def __init__(self, transformer, vae, text_encoders, tokenizers, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", resolution: int | None = None,
                 vae_saved_config: dict | None = None, latent_scale: float | None = None,
                 max_sequence_length: int | None = None):
        self.device = torch.device(device)
        self.denoiser = transformer.to(self.device).eval().requires_grad_(False)
        self.codec = VAECodec(vae, self.device, saved_config=vae_saved_config, latent_scale=latent_scale,
                              posterior=self.vae_posterior)
        self.vae = self.codec.vae
        self.text_encoders = tuple(e.to(self.device).eval().requires_grad_(False) for e in text_encoders)
        self.tokenizers = tuple(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        config = self.denoiser.config
        self.guidance_kind = "embedded" if config.guidance_embeds else "none"
        self.channels = self.codec.channels
        if int(config.in_channels) != 4 * self.channels or (config.out_channels or config.in_channels) != \
                config.in_channels or int(config.patch_size) != 1:
            raise ValueError(f"the transformer takes {config.in_channels} channels (patch size {config.patch_size}) "
                             f"but 2 x 2 packed patches of the VAE's {self.channels} latent channels have "
                             f"{4 * self.channels}")
        self.image_mode = self.codec.image_mode
        side = 2 * self.codec.factor  # one packed patch, in pixels
        # The longest image sequence the dynamic shift is defined for is the model's own size (4096 patches:
        # 1024 px, FluxPipeline's default size).
        self.native_resolution = math.isqrt(int(self.scheduler_config.get("max_image_seq_len", 4096))) * side
        if resolution is None:
            resolution = min(self.native_resolution, PAPER_RESOLUTION)
        self.image_size = check_resolution(resolution, self.native_resolution, side)
        self.image_seq_len = (self.image_size // side) ** 2
        self.mu = image_shift(self.image_seq_len, self.scheduler_config)
        grid = self.sampler(int(self.scheduler_config.get("num_train_timesteps", 1000)))
        self.sigmas = grid.sigmas[:-1].to(self.device, torch.float32)  # the terminal 0 is no training level
        self.timesteps = grid.timesteps.to(self.device, torch.float32)
        h = self.latent_shape[1]
        self._img_ids = image_ids(h, h, self.device)
        self.source = source
        clip, t5_tokenizer = self.tokenizers
        self.max_sequence_length = max_sequence_length or min(T5_TOKENS[self.guidance_kind],
                                                              int(t5_tokenizer.model_max_length))
        self._txt_ids = torch.zeros(self.max_sequence_length, 3, device=self.device)
        self.soft_tokenizer = clip
        self.max_length = int(clip.model_max_length)
        self.n_soft_tokens = self.max_length - 2
        self.vocab_size = int(self.text_encoders[0].get_input_embeddings().weight.shape[0])
        # A full-length prompt: CLIP-L's pooled vector, all Flux takes from CLIP, sees every learned token.
        self._soft_ids = full_length_ids(clip, self.max_length, self.device)
        self._uncond = self.prompt_embeddings([""])

    # --- the velocity and x0 (the forward process and the Euler check: flow.FlowMatching) ---
    def _guidance(self, guidance, n: int) -> torch.Tensor | None:
        if self.guidance_kind == "none":
            return None
        g = torch.as_tensor(guidance, dtype=torch.float32, device=self.device)
        return g.expand(n) if g.ndim == 0 else g

    def _velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond, guidance) -> torch.Tensor:
        embeds, pooled = cond if cond is not None else self.uncond_embeddings(len(x))
        h, w = x.shape[-2:]
        img_ids = self._img_ids if (h, w) == self.latent_shape[1:] else image_ids(h, w, self.device)
        out = self.denoiser(hidden_states=pack(x), encoder_hidden_states=embeds, pooled_projections=pooled,
                               timestep=timestep.to(self.device, x.dtype) / 1000, img_ids=img_ids,
                               txt_ids=self._txt_ids[: embeds.shape[1]], guidance=self._guidance(guidance, len(x)))
        return unpack(out.sample, h, w)

    def predict_x0(self, x_t: torch.Tensor, idx: torch.Tensor, cond=None) -> torch.Tensor:
        v = self._velocity(x_t, self.timesteps[idx.to(self.device)], cond, self.train_guidance)
        return x0_from_flow_velocity(v, x_t, self._sigma(idx, x_t.ndim))

    def guided_output(self, x: torch.Tensor, t: torch.Tensor, cond=None,
                      guidance: float | list[float] = 1.0) -> torch.Tensor:
        """The velocity at model timesteps t (0..1000), one forward: dev takes each row's guidance scale as an
        input, schnell has none to take."""
        return self._velocity(x, t, cond, guidance)

    def sampler(self, steps: int, schedule: str = "model"):
        """FluxPipeline's grid: sigmas linspace(1, 1/steps, steps) through the scheduler's shift at this
        resolution's mu (unless the config asks for its own flow sigmas)."""
        scheduler = self._euler(schedule)
        if self.scheduler_config.get("use_flow_sigmas"):
            scheduler.set_timesteps(steps, device=self.device, mu=self.mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=self.device, mu=self.mu)
        return scheduler

    # --- text conditioning: (T5 hidden states [n, L, D], CLIP-L pooled [n, 768]) ---
    def _tokenize(self, k: int, texts: list[str], max_length: int) -> torch.Tensor:
        return tokenize(self.tokenizers[k], texts, max_length, self.device)["input_ids"]

    def _t5(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoders[1](self._tokenize(1, texts, self.max_sequence_length))[0]

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str]):
        pooled = self.text_encoders[0](self._tokenize(0, texts, self.max_length)).pooler_output
        return self._t5(texts), pooled

    @torch.no_grad()
    def soft_prompt_context(self, caption: str):
        """T5 keeps the caption while CLIP-L's tokens are inverted."""
        return self._t5([caption])

    def soft_prompt_embeddings(self, probs: torch.Tensor, context):
        pooled = encode_soft_tokens(self.text_encoders[0], self._soft_ids, probs).pooler_output
        return context.expand(len(probs), *context.shape[1:]), pooled

    def describe(self) -> dict:
        return {
            "family": self.family, "source": self.source, "transformer_class": type(self.denoiser).__name__,
            "resolution": self.image_size, "native_resolution": self.native_resolution,
            "latent_channels": self.channels, **self.codec.describe(),
            "guidance_kind": self.guidance_kind, "train_guidance": self.train_guidance if self.guidance_kind ==
            "embedded" else None, "t5_tokens": self.max_sequence_length, "vocab_size": self.vocab_size,
            "scheduler_class": self.scheduler_config.get("_class_name"),
            "shift": self.scheduler_config.get("shift"),
            "dynamic_shifting": bool(self.scheduler_config.get("use_dynamic_shifting")),
            "image_seq_len": self.image_seq_len,
            "mu": round(self.mu, 6) if self.scheduler_config.get("use_dynamic_shifting") else None,
            **({"loras": list(self.loras)} if self.loras else {}),
        }


def detect(folder: ModelFolder) -> bool:
    return (folder.transformer or {}).get("_class_name") == "FluxTransformer2DModel"


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers
    import transformers

    root = folder.root
    require(root, folder.listing, "a Flux model", ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    transformer = load_component(diffusers.FluxTransformer2DModel, root / "transformer", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)
    encoders = [load_component(transformers.CLIPTextModel, root / "text_encoder", allow_pickle, root),
                load_component(transformers.T5EncoderModel, root / "text_encoder_2", allow_pickle, root)]
    tokenizers = load_tokenizers(root, {"tokenizer": transformers.CLIPTokenizer,
                                        "tokenizer_2": transformers.AutoTokenizer})
    return build(FluxAdapter, root, transformer, vae, encoders, tokenizers, folder.scheduler_config, device=device,
                 source=source, resolution=resolution, latent_scale=latent_scale, vae_saved_config=vae_saved)


def load_lora(components: dict, f, name: str) -> int:
    from diffusers import FluxPipeline as Loader

    # Flux LoRAs train CLIP-L at most; the T5 encoder (text_encoder_2 here) has no LoRA format.
    state, alphas = Loader.lora_state_dict(str(f.parent), return_alphas=True, **fetch_options(f))
    Loader.load_lora_into_transformer(state, alphas, components["denoiser"], adapter_name=name)
    load_text_encoder_loras(Loader, state, alphas, components, name, prefixes=("text_encoder",))
    return state_tensors(state)


def save_lora(components: dict, out, layers: dict, adapter_name: str):
    from diffusers import FluxPipeline

    return save_pipeline_lora(FluxPipeline, out, layers, denoiser="transformer", text_encoders=("text_encoder",))


FAMILY = Family(
    name="flux", folder="`transformer` (FluxTransformer2DModel) + CLIP-L + T5 + `vae`", detect=detect, load=load,
    # No paper setting: the SD3 preset with guidance 1..5 (covering dev's usual 3.5; each scale costs one forward);
    # schnell, distilled for 1-4 steps and without a guidance input, checks with 4 Euler steps at guidance 1.
    presets={"flux": dict(sd3.PRESET),
             "flux-schnell": {**sd3.PRESET, "sampler_steps": 4, "guidance_scales": [1.0]}},
    sampler="euler", lora=LoraFormat(load=load_lora, save=save_lora), tiny=build_tiny_flux,
    tiny_variants={"flux-dev": {"guidance_embeds": True}, "flux-schnell": {"guidance_embeds": False}},
)
