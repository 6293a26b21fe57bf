"""Tiny randomly initialised pipelines of every supported family, built from config (no download).

They have the exact folder layout, classes and numerical paths of the real models, at a size that runs
in a second on a CPU: the tests and the per-family timing benchmark use them. Their scores mean nothing. Each
family names its builder and the variants the tests run (`Family.tiny`, `tiny_variants`).
The DDPM-type ones train on 100 timesteps unless `train_timesteps` says otherwise (real models have 1,000,
which the scorers' default timesteps need).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from invmm.zoo.tokenizer import build_clip_tokenizer


def _save(path: Path, components: dict, pipeline_class: str) -> Path:
    for name, comp in components.items():
        comp.save_pretrained(path / name)
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    return path


def tiny_vae(kind: str = "kl", **config):
    from diffusers import AutoencoderKL, VQModel

    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4)
    if kind == "kl":
        return AutoencoderKL(**common, **config)
    return VQModel(num_vq_embeddings=32, **common, **config)


def tiny_clip(vocab: dict[str, int], *, projection: bool = False, max_length: int = 77):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=16, max_position_embeddings=max_length, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _tiny_unet2d(channels: int, size: int = 8):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def build_tiny_pixel(path: Path, *, prediction_type="epsilon", channels=1, size=8, seed=0, safe=True,
                     train_timesteps=100) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler

    torch.manual_seed(seed)
    scheduler = DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="linear",
                              prediction_type=prediction_type)
    DDPMPipeline(unet=_tiny_unet2d(channels, size), scheduler=scheduler).save_pretrained(
        path, safe_serialization=safe
    )
    return path


def build_tiny_ldm(path: Path, *, vae_kind: str = "kl", prediction_type="v_prediction", seed=0,
                   train_timesteps=100) -> Path:
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    components = {
        "unet": _tiny_unet2d(4),
        "vae" if vae_kind == "kl" else "vqvae": tiny_vae(vae_kind),
        "scheduler": DDIMScheduler(num_train_timesteps=train_timesteps, prediction_type=prediction_type),
    }
    return _save(path, components, "LDMPipeline")


def build_tiny_sd(path: Path, *, prediction_type="epsilon", seed=0, train_timesteps=100) -> Path:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    components = {
        "unet": UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=2,
            norm_num_groups=4,
        ),
        "vae": tiny_vae("kl"),
        "text_encoder": tiny_clip(tokenizer.get_vocab()),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(num_train_timesteps=train_timesteps, prediction_type=prediction_type),
    }
    return _save(path, components, "StableDiffusionPipeline")


def build_tiny_sd3(path: Path, *, seed=0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    components = {
        "transformer": SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
            pos_embed_max_size=16,
        ),
        # SD3's VAE shifts and scales its latents; non-trivial values make the tests see both.
        "vae": tiny_vae("kl", scaling_factor=1.5, shift_factor=0.1),
        "text_encoder": tiny_clip(vocab, projection=True),
        "text_encoder_2": tiny_clip(vocab, projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
    }
    return _save(path, components, "StableDiffusion3Pipeline")


def build_tiny_dit(path: Path, *, seed=0, latent=True, train_timesteps=100) -> Path:
    """A class-conditional DiT (ImageNet's 1,000 classes and null class 1000, as DiTPipeline assumes) with a
    learned-sigma output, on a tiny VAE's latents (or on RGB pixels with latent=False)."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(seed)
    channels = 4 if latent else 3
    components = {
        "transformer": DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=channels, out_channels=2 * channels,
            num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1,
        ),
        "scheduler": DDIMScheduler(num_train_timesteps=train_timesteps),
    }
    if latent:
        from diffusers import DiTPipeline

        DiTPipeline(vae=tiny_vae("kl"), **components).save_pretrained(path)
    else:  # DiTPipeline cannot hold a pixel-space model: the folder only
        _save(path, components, "DiTPipeline")
    names = {str(i): f"class {i}" for i in range(1000)}
    names.update({"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus"})
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "id2label": names}))
    return path


def build_tiny_flux(path: Path, *, seed=0, guidance_embeds=True) -> Path:
    """Flux.1: "dev" with a guidance input (guidance_embeds), "schnell" without one. The T5 tokenizer is the real
    class (transformers' T5Tokenizer, the Unigram tokenizers backend) over a character vocabulary."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer()
    # Every printable ASCII character (Flux does not lowercase prompts). model_max_length caps the T5 sequence
    # the adapter uses (the real tokenizer says 512).
    t5_tokenizer = build_tiny_t5_tokenizer("".join(map(chr, range(33, 127))), model_max_length=32)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    # Flux's VAE: 16 latent channels, shifted and scaled, no quant convs.
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=16, norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1,
                        use_quant_conv=False, use_post_quant_conv=False)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(2, 2, 4))
    # The real schedulers (dev: dynamic shifting; schnell: none, shift 1) with sequence lengths scaled down so
    # that the native side (16 px, 4 x 4 packed patches) is the longest one, as 4096 is at 1024 px.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if guidance_embeds else 1.0, use_dynamic_shifting=guidance_embeds,
        base_shift=0.5, max_shift=1.15, base_image_seq_len=4, max_image_seq_len=16)
    FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_clip(clip_tokenizer.get_vocab()),
                 tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer,
                 transformer=transformer).save_pretrained(path)
    return path


def build_tiny_t5_tokenizer(chars: str = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-", **kwargs):
    """An offline T5 tokenizer: transformers' own `T5Tokenizer` (a tokenizers-library Unigram model) over a
    character vocabulary with T5's special tokens at T5's ids (<pad> 0, </s> 1, <unk> 2) and no sentinel
    tokens. The default is lowercase: the PixArt pipelines lowercase prompts."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, **kwargs)


def build_tiny_pixart(path: Path, *, seed=0, sigma=False) -> Path:
    """PixArt-alpha (sigma=False) or PixArt-Sigma (sigma=True), saved by the diffusers pipeline itself.

    The alpha model has the 1024 checkpoint's sample_size 128, so that it takes the resolution and
    aspect-ratio micro-conditions as that checkpoint does (patch 8 keeps it to 256 tokens); the Sigma model
    is 8 x 8 latents and takes none. Both: a learned-sigma output (8 channels for 4 latent channels), a tiny
    T5 v1.1-style encoder, and the DPM-Solver scheduler config the real checkpoints ship."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 pad_token_id=0, eos_token_id=1))
    transformer = PixArtTransformer2DModel(
        sample_size=8 if sigma else 128, patch_size=2 if sigma else 8, in_channels=4, out_channels=8, num_layers=2,
        num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24, caption_channels=32, norm_num_groups=4,
    )  # the micro-conditions take a third of the width each: a width divisible by 3
    # A slimmer VAE than tiny_vae's, with no attention in its middle block (at 128 x 128 latents that would be
    # a 16384-token attention): still a factor 2 between pixels and latents, so a micro-condition given in
    # latent rather than pixel units shows.
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 4), layers_per_block=1,
                        latent_channels=4, norm_num_groups=2, mid_block_add_attention=False)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear", prediction_type="epsilon")
    pipeline = (PixArtSigmaPipeline if sigma else PixArtAlphaPipeline)(
        tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler)
    pipeline.save_pretrained(path)
    return path


def build_tiny_sdxl(path: Path, *, seed=0, prediction_type="epsilon", force_zeros_for_empty_prompt=True,
                    train_timesteps=100) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as SDXL's: the second tokenizer pads with "!", the first with the end token
    vocab = tokenizer.get_vocab()

    def clip(cls, hidden: int, projection: int, **ids):
        return cls(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, projection_dim=projection, max_position_embeddings=77,
            **{"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"], **ids}))

    # Unequal widths (16 + 24 features, a 20-wide projection) so that a mix-up of the encoders cannot pass; the
    # second encoder keeps the legacy eos_token_id 2 of the real SDXL configs (it pools at the highest id).
    text_encoder = clip(CLIPTextModel, 16, 16)
    text_encoder_2 = clip(CLIPTextModelWithProjection, 24, 20, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=16 + 24, norm_num_groups=4, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=20 + 6 * time_dim,
    )
    scheduler = EulerDiscreteScheduler(num_train_timesteps=train_timesteps, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type=prediction_type,
                                       timestep_spacing="leading", steps_offset=1)
    StableDiffusionXLPipeline(
        vae=tiny_vae("kl", scaling_factor=0.13025, force_upcast=True), text_encoder=text_encoder,
        text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False,
    ).save_pretrained(path, safe_serialization=True)
    # The real SDXL scheduler file also carries the DDIM/PNDM keys it was derived from; without them a DDIM
    # built from it would clip latents and take alpha_bar = 1 as the final step.
    config_path = path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0)
    config_path.write_text(json.dumps(config, indent=2))
    return path
