import numpy as np
import pytest
import torch

from invmm.config import PIXEL_THRESHOLD
from invmm.similarity import PixelSimilarity, SSCDSimilarity


def photo(name, size):
    from PIL import Image
    from skimage import data

    arr = getattr(data, name)()
    im = Image.fromarray(arr).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1)


def test_sscd_on_real_photos():
    sim = SSCDSimilarity(resize=64)
    astronaut, coffee, chelsea = photo("astronaut", 64), photo("coffee", 64), photo("chelsea", 64)
    g = torch.Generator().manual_seed(0)
    noisy = (astronaut + torch.randn(astronaut.shape, generator=g) * 0.05).clamp(-1, 1)
    s = sim(torch.stack([astronaut, noisy, coffee, chelsea]), astronaut)
    assert s[0].item() == pytest.approx(1.0, abs=1e-3)
    assert s[1].item() > 0.9
    assert s[2].item() < 0.3 and s[3].item() < 0.3
    assert sim.describe()["model"].endswith("sscd.onnx")


def test_sscd_bad_model_path_is_a_clear_error(tmp_path):
    from invmm.errors import InvMMInputError

    with pytest.raises(InvMMInputError, match="no such file"):
        SSCDSimilarity(model_path=str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(InvMMInputError, match="TorchScript"):
        SSCDSimilarity(model_path=str(junk))


def test_pixel_threshold_separates_noise_from_the_nearest_other_digit():
    from invmm.zoo.digits import digits_uint8, to_model_space

    x = to_model_space(digits_uint8()[:300]).unsqueeze(1)
    sim = PixelSimilarity()
    g = torch.Generator().manual_seed(0)
    noisy = x + torch.randn(x.shape, generator=g) * 0.05
    self_scores = torch.stack([sim(noisy[i : i + 1], x[i]) for i in range(len(x))]).squeeze(1)
    assert (self_scores >= PIXEL_THRESHOLD).all()
    nearest = []
    for i in range(len(x)):
        s = sim(x, x[i])
        s[i] = -2
        nearest.append(s.max().item())
    assert np.mean(np.array(nearest) >= PIXEL_THRESHOLD) < 0.01
