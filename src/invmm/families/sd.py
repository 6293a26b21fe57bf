"""Stable Diffusion 1.x / 2.x: VAE + `UNet2DConditionModel` + CLIP text encoder (the paper's `sd` setting).

Without a VAE the same model runs in pixel space (as the toy text-to-image model in the zoo does).

The forward process, x0 conversion and DDIM sampler are noise_schedule.py's (through a VAE codec, or in pixel
space); this file adds the text conditioning: fixed prompt embeddings, soft prompts (token-embedding
mixtures substituted for positions 1..L-2 of the tokenized empty prompt, the start token and the last
position kept), and classifier-free guidance against the empty prompt for the success check. LoRAs load through
diffusers' StableDiffusionPipeline loaders (UNet and CLIP).
"""

from __future__ import annotations

import torch

from invmm.errors import InvMMInputError
from invmm.families.base import NOISE_SCHEDULE, TEXT, Family, LoraFormat, ModelFolder
from invmm.families.codecs import VAECodec
from invmm.families.loading import build, load_component, load_tokenizers, load_vae, no_vae_no_scale, read_json
from invmm.families.lora import fetch_options, load_text_encoder_loras, save_pipeline_lora, state_tensors
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.families.text import encode_soft_tokens, tokenize
from invmm.zoo.tiny import build_tiny_sd

# The paper's Stable Diffusion setting: B = 16, lambda growing 10x faster, DDIM 50, guidance 1..7.
PRESET = {
    "delta": 1e-3,
    "batch_size": 16,
    "sampler_steps": 50,
    "guidance_scales": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    "sscd_resize": 320,
}


class SDAdapter(NoiseScheduleAdapter):
    family = "sd"
    # The authors' SD 1.x/2.x inversion scripts override get_first_stage_encoding to take the posterior's mode.
    vae_posterior = "mode"
    conditional = True
    capabilities = frozenset({NOISE_SCHEDULE, TEXT})
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
        self.text_encoders = (text_encoder.to(self.device).eval().requires_grad_(False),)
        self.tokenizers = (tokenizer,)
        self.soft_tokenizer = tokenizer  # the one prompt inversion learns tokens of
        self.max_length = int(tokenizer.model_max_length)
        self.n_soft_tokens = self.max_length - 2
        self.vocab_size = int(self.text_encoders[0].get_input_embeddings().weight.shape[0])
        self._empty_ids = self.tokenize([""])
        self._uncond = self.prompt_embeddings([""])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizers[0], texts, self.max_length, self.device)["input_ids"]

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoders[0](self.tokenize(texts))[0]

    def uncond_embeddings(self, n: int) -> torch.Tensor:
        return self._uncond.expand(n, -1, -1)

    def soft_prompt_context(self, caption: str):
        return None  # SD 1.x/2.x have one text encoder, and it is the one inverted

    def soft_prompt_embeddings(self, probs: torch.Tensor, context=None) -> torch.Tensor:
        """Encode [n, L-2, V] token distributions: their embedding mixtures replace positions 1..L-2."""
        return encode_soft_tokens(self.text_encoders[0], self._empty_ids, probs)[0]

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = self.uncond_embeddings(len(x_t))
        out = self.denoiser(x_t, t.to(self.device), encoder_hidden_states=cond).sample
        return out[:, : self.channels]

    def describe(self) -> dict:
        d = super().describe()
        d.update(text_encoder_class=type(self.text_encoders[0]).__name__, vocab_size=self.vocab_size,
                 max_length=self.max_length)
        return d


def detect(folder: ModelFolder) -> bool:
    unet = folder.unet or {}
    return unet.get("_class_name") == "UNet2DConditionModel" and unet.get("addition_embed_type") != "text_time"


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers
    import transformers

    root = folder.root
    missing = [c for c in ("text_encoder", "tokenizer") if not folder.has(c)]
    if missing:
        raise InvMMInputError(
            f"model {root}: a UNet2DConditionModel needs {', '.join(missing)} beside it (found: {folder.listing})"
        )
    encoder_cfg = read_json(root / "text_encoder" / "config.json", f"model {root}")
    arch = (encoder_cfg.get("architectures") or ["CLIPTextModel"])[0]
    if arch not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise InvMMInputError(f"model {root}: text encoder {arch!r} is not a CLIP text model")
    unet = load_component(diffusers.UNet2DConditionModel, root / "unet", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)  # none: a pixel-space text-to-image model
    if vae is None:
        no_vae_no_scale(folder, latent_scale)
    text_encoder = load_component(getattr(transformers, arch), root / "text_encoder", allow_pickle, root)
    (tokenizer,) = load_tokenizers(root, {"tokenizer": transformers.CLIPTokenizer})
    return build(SDAdapter, root, unet, vae, text_encoder, tokenizer, folder.scheduler_config, device=device,
                 source=source, resolution=resolution, vae_saved_config=vae_saved, latent_scale=latent_scale)


def load_lora(components: dict, f, name: str) -> int:
    from diffusers import StableDiffusionPipeline as Loader

    state, alphas = Loader.lora_state_dict(str(f.parent), **fetch_options(f))
    Loader.load_lora_into_unet(state, alphas, components["denoiser"], adapter_name=name)
    load_text_encoder_loras(Loader, state, alphas, components, name, prefixes=("text_encoder",))
    return state_tensors(state)


def save_lora(components: dict, out, layers: dict, adapter_name: str):
    from diffusers import StableDiffusionPipeline

    return save_pipeline_lora(StableDiffusionPipeline, out, layers)


FAMILY = Family(
    name="sd", folder="`unet` (UNet2DConditionModel) + `text_encoder` (CLIP) + `tokenizer` [+ `vae`]",
    detect=detect, load=load, presets={"sd": PRESET}, sampler="ddim",
    lora=LoraFormat(load=load_lora, save=save_lora), tiny=build_tiny_sd,
    tiny_variants={"sd": {}, "sd-v": {"prediction_type": "v_prediction"}},
)
