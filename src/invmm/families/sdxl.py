"""Stable Diffusion XL: VAE + `UNet2DConditionModel` with added text/size conditioning + two CLIP text encoders.

The forward process, x0 conversion and DDIM check are noise_schedule.py's, in the VAE's latent space
(codecs.VAECodec).
This file adds SDXL's conditioning, as diffusers' `StableDiffusionXLPipeline` builds it. A conditioning is the
tuple (prompt_embeds [n, 77, D1 + D2], text_embeds [n, P], time_ids [n, 6]):
- prompt_embeds: the penultimate hidden states of `text_encoder` (CLIP ViT-L) and `text_encoder_2` (OpenCLIP
  bigG), concatenated on features;
- text_embeds: `text_encoder_2`'s projected pooled output;
- time_ids: original_size + crops_coords_top_left + target_size, as (height, width), (top, left), (height, width).
The unconditional prompt is zeros for both text parts when the pipeline's `force_zeros_for_empty_prompt` is set
(model_index.json; default True), else the empty prompt encoded. Its time ids are those of the conditional row it
guides: the pipeline's negative time ids equal the positive ones.

Size conditioning: SDXL was trained knowing each image's size before it was resized and where it was cropped.
An image measured here was decoded at its original (width, height), its short side resized to `image_size`
and center-cropped (images.load_image, PIL's ImageOps.fit); `time_ids` states exactly that.

Prompt inversion learns one token distribution and feeds it to BOTH text encoders, as the pipeline feeds one
prompt to both (prompt_2 defaults to prompt): text_encoder_2 gives 1280 of the 2048 cross-attention features and
the whole pooled embedding, so inverting CLIP-L alone would leave most of the text conditioning at the empty
prompt when no caption is known. The two CLIP tokenizers share one vocabulary, so the distribution costs what
SD 1.x's does; as there, a caption given with prompt inversion is not used. A model whose tokenizers differ
inverts CLIP-L only, text_encoder_2 keeping the caption (the SD3 convention of sd3.py).
"""

from __future__ import annotations

import torch

from invmm.errors import InvMMInputError
from invmm.families import sd
from invmm.families.base import NOISE_SCHEDULE, TEXT, Family, LoraFormat, ModelFolder
from invmm.families.codecs import VAECodec
from invmm.families.loading import build, load_component, load_tokenizers, load_vae
from invmm.families.lora import fetch_options, load_text_encoder_loras, save_pipeline_lora, state_tensors
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.families.text import encode_soft_tokens, full_length_ids, tokenize
from invmm.zoo.tiny import build_tiny_sdxl

N_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)


def crop_top_left(original_size: tuple[int, int], side: int) -> tuple[int, int]:
    """(top, left) of the center crop images.load_image takes, in the frame of the image with its short side
    resized to `side` (the frame SDXL's training crops were recorded in). ImageOps.fit crops the centered
    short-side square of the original and resizes it, which is the same crop up to the scale side / short.
    Rounded to whole pixels; diffusers' SDXL training script, which resizes to an integer side first, can differ
    by one pixel."""
    w, h = (int(v) for v in original_size)
    short = min(w, h)
    return round((h - short) * side / (2 * short)), round((w - short) * side / (2 * short))


class SDXLAdapter(NoiseScheduleAdapter):
    family = "sdxl"
    # No paper setting: as its nearest paper family, SD 1.x/2.x (the same kind of KL VAE and UNet), the mode.
    vae_posterior = "mode"
    conditional = True
    capabilities = frozenset({NOISE_SCHEDULE, TEXT})
    # The paper has no SDXL setting; the UNet/DDIM family follows the authors' SD 1.x check: one soft prompt
    # draw shared by all samples at every guidance scale.
    check_prompt_draws = "shared"
    # The conditioning takes each image's file size (conditioning.conditioner passes it).
    size_conditioned = True

    def __init__(self, unet, vae, text_encoders, tokenizers, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", resolution: int | None = None,
                 vae_saved_config: dict | None = None, latent_scale: float | None = None,
                 force_zeros_for_empty_prompt: bool = True):
        if any(getattr(vae.config, k, None) is not None for k in ("latents_mean", "latents_std")):
            raise ValueError("the VAE normalises its latents with latents_mean/latents_std (a Playground-style model); "
                             "only SDXL's scaled latents are supported")
        if str(scheduler_config.get("_class_name", "")).startswith("EDM"):
            raise ValueError(f"scheduler {scheduler_config['_class_name']} is an EDM schedule without betas; SDXL "
                             "models are measured on their DDPM alpha_bar schedule")
        codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                         posterior=self.vae_posterior)
        super().__init__(unet, scheduler_config, device=device, source=source, resolution=resolution, codec=codec)
        self.text_encoders = tuple(e.to(self.device).eval().requires_grad_(False) for e in text_encoders)
        self.tokenizers = tuple(tokenizers)
        clip_l, clip_g = self.text_encoders
        if not hasattr(clip_g, "text_projection"):
            raise ValueError(f"text_encoder_2 is a {type(clip_g).__name__}; SDXL's must be a "
                             "CLIPTextModelWithProjection (its projected pooled output is the UNet's text_embeds)")
        self.addition_time_embed_dim = int(self.denoiser.config.addition_time_embed_dim)
        projection = int(clip_g.config.projection_dim)
        expected = int(self.denoiser.add_embedding.linear_1.in_features)
        if expected != N_TIME_IDS * self.addition_time_embed_dim + projection:
            raise ValueError(
                f"the UNet's added embedding takes {expected} features, but {N_TIME_IDS} size ids x "
                f"{self.addition_time_embed_dim} + text_encoder_2's projection {projection} make "
                f"{N_TIME_IDS * self.addition_time_embed_dim + projection} (an SDXL refiner, conditioned on an "
                "aesthetic score, is not supported)")
        width = int(clip_l.config.hidden_size) + int(clip_g.config.hidden_size)
        if width != int(self.denoiser.config.cross_attention_dim):
            raise ValueError(f"the two text encoders give {width} features but the UNet attends to "
                             f"{self.denoiser.config.cross_attention_dim}")
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.force_upcast = bool(getattr(self.vae.config, "force_upcast", False))
        self.max_length = int(self.tokenizers[0].model_max_length)
        if int(self.tokenizers[1].model_max_length) != self.max_length:
            raise ValueError("the two tokenizers have different lengths; SDXL's both take 77 tokens")
        self.n_soft_tokens = self.max_length - 2
        self.soft_tokenizer = self.tokenizers[0]
        self.vocab_size = int(clip_l.get_input_embeddings().weight.shape[0])
        shared = (self.tokenizers[0].get_vocab() == self.tokenizers[1].get_vocab()
                  and int(clip_g.get_input_embeddings().weight.shape[0]) == self.vocab_size)
        self.inverted_encoders = (0, 1) if shared else (0,)
        # A soft prompt fills all 75 inner positions, as a 75-token prompt would (CLIP-G's pooled vector is the
        # UNet's text_embeds).
        self._soft_ids = [full_length_ids(t, self.max_length, self.device) for t in self.tokenizers]
        with torch.no_grad():
            embeds, pooled = self._encode([""])
        if self.force_zeros_for_empty_prompt:
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        self._uncond_text = (embeds, pooled)

    # --- the UNet with SDXL's added conditioning ---
    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        embeds, text_embeds, time_ids = cond if cond is not None else self.uncond_embeddings(len(x_t))
        out = self.denoiser(x_t, t.to(self.device), encoder_hidden_states=embeds,
                        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        return out[:, : self.channels]

    def unconditional_rows(self, cond, n: int):
        embeds, pooled = (c.expand(n, *c.shape[1:]) for c in self._uncond_text)
        return embeds, pooled, cond[2]  # each unconditional row keeps its conditional row's sizes

    # --- images: the SDXL VAE overflows in float16 ---
    def _fp16_autocast(self) -> bool:
        kind = self.device.type
        return (self.force_upcast and torch.is_autocast_enabled(kind)
                and torch.get_autocast_dtype(kind) == torch.float16)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self._fp16_autocast():
            with torch.autocast(self.device.type, enabled=False):
                return self.codec.encode(images.float(), generator)
        return self.codec.encode(images, generator)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        # The pipeline upcasts a force_upcast VAE only when it is float16; here the VAE's weights stay float32,
        # so float16 can reach it only through --precision fp16's autocast, which is switched off around it.
        if self._fp16_autocast():
            with torch.autocast(self.device.type, enabled=False):
                return self.codec.decode(x0.float())
        return self.codec.decode(x0)

    # --- text and size conditioning ---
    def time_ids(self, original_size: tuple[int, int] | None = None, n: int = 1) -> torch.Tensor:
        """[n, 6] size conditioning of an image whose source was `original_size` = (width, height) as
        ImageItem.original_size records it (None: already image_size square, nothing cropped)."""
        side = self.image_size
        if original_size is None:
            ids = [side, side, 0, 0, side, side]
        else:
            w, h = (int(v) for v in original_size)
            ids = [h, w, *crop_top_left((w, h), side), side, side]
        return torch.tensor([ids], dtype=torch.float32, device=self.device).expand(n, N_TIME_IDS)

    def _tokenize(self, k: int, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizers[k], texts, self.max_length, self.device)["input_ids"]

    def _clip(self, k: int, texts: list[str]):
        out = self.text_encoders[k](self._tokenize(k, texts), output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    def _encode(self, texts: list[str]):
        l_hidden, _ = self._clip(0, texts)  # CLIP-L's pooled output is not used by SDXL
        g_hidden, g_pooled = self._clip(1, texts)
        return torch.cat([l_hidden, g_hidden], dim=-1), g_pooled

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str], original_size: tuple[int, int] | None = None):
        embeds, pooled = self._encode(texts)
        return embeds, pooled, self.time_ids(original_size, len(texts))

    def uncond_embeddings(self, n: int):
        embeds, pooled = (c.expand(n, *c.shape[1:]) for c in self._uncond_text)
        return embeds, pooled, self.time_ids(None, n)

    @torch.no_grad()
    def soft_prompt_context(self, caption: str, original_size: tuple[int, int] | None = None):
        """(time ids, text_encoder_2's caption states or None when it reads the soft prompt too)."""
        fixed = self._clip(1, [caption]) if self.inverted_encoders == (0,) else None
        return self.time_ids(original_size), fixed

    def soft_prompt_embeddings(self, probs: torch.Tensor, context=None):
        """Encode [n, 75, V] token distributions: their embedding mixtures replace positions 1..75."""
        time_ids, fixed = context if context is not None else self.soft_prompt_context("")
        n = len(probs)
        l_out = encode_soft_tokens(self.text_encoders[0], self._soft_ids[0], probs, output_hidden_states=True)
        if fixed is None:
            g_out = encode_soft_tokens(self.text_encoders[1], self._soft_ids[1], probs, output_hidden_states=True)
            g_hidden, g_pooled = g_out.hidden_states[-2], g_out[0]
        else:
            g_hidden, g_pooled = (c.expand(n, *c.shape[1:]) for c in fixed)
        return torch.cat([l_out.hidden_states[-2], g_hidden], dim=-1), g_pooled, time_ids.expand(n, N_TIME_IDS)

    def describe(self) -> dict:
        d = super().describe()
        d.update(text_encoder_classes=[type(e).__name__ for e in self.text_encoders], vocab_size=self.vocab_size,
                 max_length=self.max_length, force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
                 inverted_text_encoders=["text_encoder", "text_encoder_2"][: len(self.inverted_encoders)],
                 addition_time_embed_dim=self.addition_time_embed_dim, vae_force_upcast=self.force_upcast)
        return d


def detect(folder: ModelFolder) -> bool:
    # SDXL's UNet adds pooled text and size conditioning to its time embedding.
    unet = folder.unet or {}
    return unet.get("_class_name") == "UNet2DConditionModel" and unet.get("addition_embed_type") == "text_time"


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers
    import transformers

    root = folder.root
    missing = [c for c in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2") if not folder.has(c)]
    if missing:
        refiner = "text_encoder" in missing and folder.has("text_encoder_2")
        raise InvMMInputError(
            f"model {root}: an SDXL model needs {', '.join(missing)} (found: {folder.listing})"
            + ("; an SDXL refiner (text_encoder_2 only, aesthetic-score conditioning) is not supported" if refiner
               else "")
        )
    unet = load_component(diffusers.UNet2DConditionModel, root / "unet", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)
    encoders = [
        load_component(transformers.CLIPTextModel, root / "text_encoder", allow_pickle, root),
        load_component(transformers.CLIPTextModelWithProjection, root / "text_encoder_2", allow_pickle, root),
    ]
    tokenizers = load_tokenizers(root, {"tokenizer": transformers.CLIPTokenizer,
                                        "tokenizer_2": transformers.CLIPTokenizer})
    # The pipeline's own setting (default True): the unconditional prompt is zeros, not the encoded "".
    force_zeros = bool(folder.index.get("force_zeros_for_empty_prompt", True))
    return build(SDXLAdapter, root, unet, vae, encoders, tokenizers, folder.scheduler_config, device=device,
                 source=source, resolution=resolution, latent_scale=latent_scale, vae_saved_config=vae_saved,
                 force_zeros_for_empty_prompt=force_zeros)


def load_lora(components: dict, f, name: str) -> int:
    from diffusers import StableDiffusionXLPipeline as Loader

    state, alphas = Loader.lora_state_dict(str(f.parent), unet_config=components["denoiser"].config,
                                           **fetch_options(f))
    Loader.load_lora_into_unet(state, alphas, components["denoiser"], adapter_name=name)
    load_text_encoder_loras(Loader, state, alphas, components, name)
    return state_tensors(state)


def save_lora(components: dict, out, layers: dict, adapter_name: str):
    from diffusers import StableDiffusionXLPipeline

    return save_pipeline_lora(StableDiffusionXLPipeline, out, layers)


FAMILY = Family(
    name="sdxl", folder="`unet` (UNet2DConditionModel, `addition_embed_type: text_time`) + CLIP-L + OpenCLIP-G + `vae`",
    detect=detect, load=load,
    # No paper setting: the SD 1.x preset (an epsilon DDPM-schedule UNet like SD 1.x); docs/families.md says why.
    presets={"sdxl": dict(sd.PRESET)}, sampler="ddim",
    lora=LoraFormat(load=load_lora, save=save_lora), tiny=build_tiny_sdxl, tiny_variants={"sdxl": {}},
)
