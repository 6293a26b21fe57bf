"""A tiny Stable-Diffusion-shaped pipeline built from config, with an offline byte-level CLIP tokenizer."""

import json

import torch


def build_tiny_sd(path, *, prediction_type="epsilon", seed=0):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from invmm.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(path / "tok-src")
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4)
    scheduler = DDIMScheduler(num_train_timesteps=100, prediction_type=prediction_type)
    for name, comp in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("tokenizer", tokenizer),
                       ("scheduler", scheduler)):
        comp.save_pretrained(path / name)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def build_tiny_sd3(path, *, seed=0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from invmm.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(path / "tok-src")
    vocab = tokenizer.get_vocab()
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=16, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )) for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, scaling_factor=1.5, shift_factor=0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    for name, comp in (("transformer", transformer), ("vae", vae), ("text_encoder", encoders[0]),
                       ("text_encoder_2", encoders[1]), ("tokenizer", tokenizer), ("tokenizer_2", tokenizer),
                       ("scheduler", scheduler)):
        comp.save_pretrained(path / name)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    return path
