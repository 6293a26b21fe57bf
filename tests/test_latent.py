import math

import pytest
import torch

from invmm import measure, preset
from invmm.data.images import ImageItem
from invmm.families import load_adapter
from invmm.families.ldm import LDMAdapter
from invmm.zoo.tiny import build_tiny_ldm


@pytest.mark.parametrize("vae_kind", ["kl", "vq"])
def test_latent_family_detected_and_encoded_like_the_vae(tmp_path, vae_kind):
    model = build_tiny_ldm(tmp_path / vae_kind, vae_kind=vae_kind)
    adapter = load_adapter(str(model))
    assert isinstance(adapter, LDMAdapter) and adapter.family == "ldm"
    assert adapter.image_size == 16 and adapter.image_mode == "RGB" and adapter.prediction_type == "v_prediction"
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        enc = adapter.vae.encode(img)
        raw = enc.latent_dist.mode() if vae_kind == "kl" else enc.latents
        expected = raw * adapter.vae.config.scaling_factor
        torch.testing.assert_close(adapter.encode(img), expected)
        decoded = adapter.decode(adapter.encode(img))
        assert decoded.shape == (2, 3, 16, 16) and decoded.abs().max() <= 1


def test_latent_inversion_end_to_end(tmp_path):
    from PIL import Image

    model = build_tiny_ldm(tmp_path / "m", vae_kind="kl")
    Image.new("RGB", (20, 16), (200, 30, 30)).save(tmp_path / "red.png")
    cfg = preset("ldm", similarity="pixel", max_steps=20, batch_size=4, sampler_steps=4)
    assert (cfg.check_every, cfg.delta, cfg.sscd_resize) == (10, 5e-4, 256)
    (r,) = measure(str(model), [ImageItem(id="red", path=str(tmp_path / "red.png"))], cfg, out=tmp_path / "run")
    assert r.status == "ok" and r.steps in (10, 20) and r.resized and r.original_size == [20, 16]
    assert (r.success and math.isfinite(r.score)) or math.isinf(r.score)
    assert [c[0] for c in r.checks][:1] == [10] and len(r.similarities) == (8 if r.success else 1)
    from safetensors.torch import load_file

    from invmm.store.artifacts import artifact_stem

    mu = load_file(f"{artifact_stem(tmp_path / 'run', 'red')}.safetensors")["mu"]
    assert mu.shape == (4, 8, 8)  # the distribution lives in latent space
