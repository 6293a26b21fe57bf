import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_tiny_pixel_model(path, *, prediction_type="epsilon", channels=1, size=8, seed=0, safe=True):
    """A randomly initialised DDPM folder, small enough for fast tests."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", prediction_type=prediction_type)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=safe)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_pixel_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def toy_model():
    from invmm.zoo import shipped_digits_model

    return shipped_digits_model()


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory, toy_model):
    """Two images of each group of the shipped toy model as PNGs: {id: (path, entry)}."""
    from invmm.zoo.digits import demo_images, export_images, load_manifest

    manifest = load_manifest(toy_model)
    chosen = demo_images(manifest, 2)
    out = tmp_path_factory.mktemp("toy-images")
    paths = export_images(manifest, out, ids=[e["id"] for e in chosen])
    return {p.stem: (p, e) for p, e in zip(paths, chosen)}
