"""PixArt-alpha and PixArt-Sigma: VAE + `PixArtTransformer2DModel` + T5 encoder, a DDPM-type epsilon model.

The forward process, x0 conversion and DDIM sampler are noise_schedule.py's, through a VAE codec; the noise schedule
is the betas of the folder's scheduler config (PixArt ships a DPM-Solver config: DDIMScheduler.from_config
of it has the same betas). What this file adds follows diffusers' PixArtAlphaPipeline / PixArtSigmaPipeline:

- the prompt is lowercased and stripped (the pipelines' `clean_caption=False` preprocessing), tokenized by
  T5 to `max_sequence_length` tokens (120 for alpha, 300 for Sigma: read from model_index.json), and its T5
  states go to the transformer with the tokenizer's attention mask as `encoder_attention_mask`, so a
  conditioning is the batch-first pair (embeds [n, L, D], mask [n, L]);
- the unconditional prompt is "" encoded the same way, with its own mask;
- models with additional conditions (alpha 1024) get the image's resolution and aspect ratio;
- the learned-sigma output (8 channels for 4 latent ones) is cut to its first half, the noise prediction.

Prompt inversion learns token distributions for positions 0..L-2 of T5's input (T5 has no start token);
position L-1 is T5's closing "</s>" and the mask covers all L positions.
"""

from __future__ import annotations

import torch

from invmm.errors import InvMMInputError
from invmm.families import sd
from invmm.families.base import NOISE_SCHEDULE, TEXT, Family, ModelFolder
from invmm.families.codecs import VAECodec
from invmm.families.loading import build, load_component, load_tokenizers, load_vae, read_json, require
from invmm.families.noise_schedule import NoiseScheduleAdapter
from invmm.families.text import tokenize
from invmm.zoo.tiny import build_tiny_pixart

# diffusers' default `max_sequence_length` of each pipeline's encode_prompt and __call__.
MAX_SEQUENCE_LENGTH = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}
VARIANTS = {"PixArtAlphaPipeline": "alpha", "PixArtSigmaPipeline": "sigma"}


class PixArtAdapter(NoiseScheduleAdapter):
    family = "pixart"
    # No paper setting: as the `sd` preset it takes (an SD-type KL VAE, a DDPM schedule), the posterior's mode.
    vae_posterior = "mode"
    conditional = True
    capabilities = frozenset({NOISE_SCHEDULE, TEXT})
    # The DDPM family's check (the authors' SD 1.x one): one soft-prompt draw for all check samples.
    check_prompt_draws = "shared"
    # Without a caption, measure with a known caption rather than invert T5's prompt (see docs/families.md: a
    # 119/299-position soft prompt over T5-XXL's vocabulary, back-propagated through a 4.7B encoder).
    default_invert_prompt = False

    def __init__(self, transformer, vae, text_encoder, tokenizer, scheduler_config: dict, *,
                 device: str | torch.device = "cpu", source: str = "", resolution: int | None = None,
                 vae_saved_config: dict | None = None, latent_scale: float | None = None,
                 pipeline_class: str | None = None):
        codec = VAECodec(vae, torch.device(device), saved_config=vae_saved_config, latent_scale=latent_scale,
                         posterior=self.vae_posterior)
        super().__init__(transformer, scheduler_config, device=device, source=source, resolution=resolution,
                         codec=codec)
        out_channels = int(self.denoiser.config.out_channels or self.channels)
        if out_channels not in (self.channels, 2 * self.channels):
            raise ValueError(f"the transformer outputs {out_channels} channels for {self.channels} input ones; "
                             "expected a noise prediction, or one with its learned variance")
        self.learned_sigma = out_channels == 2 * self.channels
        self.micro_conditions = bool(self.denoiser.use_additional_conditions)

        self.text_encoders = (text_encoder.to(self.device).eval().requires_grad_(False),)
        self.tokenizers = (tokenizer,)
        self.soft_tokenizer = tokenizer
        self.pipeline_class = pipeline_class
        self.variant = VARIANTS.get(pipeline_class, "alpha")
        # A folder that names neither pipeline is read as PixArtAlphaPipeline reads any folder: 120 tokens.
        self.max_sequence_length = MAX_SEQUENCE_LENGTH.get(pipeline_class, 120)
        self.max_length = self.max_sequence_length
        self.n_soft_tokens = self.max_sequence_length - 1
        # T5-XXL's table has 32128 rows for 32100 tokenizer ids; the rest are padding no text can reach.
        self.vocab_size = min(int(self.text_encoders[0].get_input_embeddings().weight.shape[0]), len(tokenizer))
        self._uncond = self.prompt_embeddings([""])

    def _side_step(self) -> int:
        return int(self.denoiser.config.patch_size)

    # --- the denoiser ---
    def _micro_conditions(self, x: torch.Tensor) -> dict:
        """The alpha pipeline's added_cond_kwargs: the generated image's pixel height and width, and their
        ratio, per row; None for models trained without them."""
        if not self.micro_conditions:
            return {"resolution": None, "aspect_ratio": None}
        h, w = x.shape[-2] * self.codec.factor, x.shape[-1] * self.codec.factor
        n = len(x)
        return {"resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).expand(n, 2),
                "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).expand(n, 1)}

    def _model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        embeds, mask = cond if cond is not None else self.uncond_embeddings(len(x_t))
        out = self.denoiser(x_t, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                               timestep=t.to(self.device).expand(len(x_t)),
                               added_cond_kwargs=self._micro_conditions(x_t)).sample
        return out[:, : self.channels]  # learned sigma: [eps, variance] on channels

    # --- text conditioning ---
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [t.lower().strip() for t in texts]
        enc = tokenize(self.tokenizers[0], texts, self.max_sequence_length, self.device, add_special_tokens=True)
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def prompt_embeddings(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        return self.text_encoders[0](ids, attention_mask=mask)[0], mask

    def uncond_embeddings(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(c.expand(n, *c.shape[1:]) for c in self._uncond)

    def soft_prompt_context(self, caption: str):
        return None  # T5 is the only text encoder, and it is the one inverted

    def soft_prompt_embeddings(self, probs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode [n, L-1, V] token distributions at T5 positions 0..L-2, "</s>" at L-1, all L unmasked.

        T5 adds nothing to its token embeddings (positions enter as a relative bias inside attention), so the
        embedding mixtures go in as `inputs_embeds`, which the encoder uses exactly as its table lookup. (A
        hook on `get_input_embeddings()` would not do: in transformers 5 that is `shared`, a module the
        encoder never calls; its `encoder.embed_tokens` only shares the weight.)"""
        table = self.text_encoders[0].get_input_embeddings().weight
        soft = probs.to(table.dtype) @ table[: self.vocab_size]
        eos = table[self.tokenizers[0].eos_token_id].expand(len(soft), 1, -1)
        embeds = torch.cat([soft, eos], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        return self.text_encoders[0](inputs_embeds=embeds, attention_mask=mask)[0], mask

    def describe(self) -> dict:
        return {
            "family": self.family, "source": self.source, "variant": self.variant,
            "pipeline_class": self.pipeline_class, "transformer_class": type(self.denoiser).__name__,
            "resolution": self.image_size, "native_resolution": self.native_resolution,
            "latent_channels": self.channels, "learned_sigma": self.learned_sigma,
            "micro_conditions": self.micro_conditions, **self.codec.describe(),
            "prediction_type": self.prediction_type, "num_train_timesteps": self.num_train_timesteps,
            "scheduler_class": self.scheduler_config.get("_class_name"),
            "text_encoder_class": type(self.text_encoders[0]).__name__, "max_sequence_length": self.max_sequence_length,
            "vocab_size": self.vocab_size,
            **({"loras": list(self.loras)} if self.loras else {}),
        }


def detect(folder: ModelFolder) -> bool:
    return (folder.transformer or {}).get("_class_name") == "PixArtTransformer2DModel"


def load(folder: ModelFolder, *, device, allow_pickle, source, resolution=None, latent_scale=None):
    import diffusers
    import transformers

    root = folder.root
    require(root, folder.listing, "a PixArt model", ("vae", "text_encoder", "tokenizer"))
    encoder_cfg = read_json(root / "text_encoder" / "config.json", f"model {root}")
    arch = (encoder_cfg.get("architectures") or ["T5EncoderModel"])[0]
    if arch != "T5EncoderModel":
        raise InvMMInputError(f"model {root}: text encoder {arch!r} is not a T5 encoder (T5EncoderModel)")
    transformer = load_component(diffusers.PixArtTransformer2DModel, root / "transformer", allow_pickle, root)
    vae, vae_saved = load_vae(folder, allow_pickle)
    text_encoder = load_component(transformers.T5EncoderModel, root / "text_encoder", allow_pickle, root)
    (tokenizer,) = load_tokenizers(root, {"tokenizer": transformers.AutoTokenizer})
    # Alpha and Sigma differ in their prompt length (120 / 300 T5 tokens); only the pipeline class says which.
    return build(PixArtAdapter, root, transformer, vae, text_encoder, tokenizer, folder.scheduler_config,
                 device=device, source=source, resolution=resolution, latent_scale=latent_scale,
                 pipeline_class=folder.index.get("_class_name"), vae_saved_config=vae_saved)


FAMILY = Family(
    name="pixart", folder="`transformer` (PixArtTransformer2DModel) + T5 + `vae`", detect=detect, load=load,
    # No paper setting: the SD 1.x preset (an epsilon DDPM-schedule model; PixArt's own default 4.5 lies inside
    # its guidance range).
    presets={"pixart": dict(sd.PRESET)}, sampler="ddim",
    lora=None,  # diffusers has no PixArt LoRA loader
    tiny=build_tiny_pixart, tiny_variants={"pixart-alpha": {}, "pixart-sigma": {"sigma": True}},
)
