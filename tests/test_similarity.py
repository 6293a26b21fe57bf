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


def test_a_user_torchscript_descriptor_is_accepted(tmp_path):
    # Stands in for sscd_disc_large.torchscript.pt: any TorchScript module mapping normalised images to
    # descriptors. The test checks the TorchScript path (input layout, normalisation, cosine), not SSCD.
    class Descriptor(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    path = tmp_path / "descriptor.torchscript.pt"
    torch.jit.script(Descriptor()).save(str(path))
    sim = SSCDSimilarity(model_path=str(path), resize=16)
    a, b = photo("astronaut", 16), photo("camera", 16)
    s = sim(torch.stack([a, b]), a)
    assert s[0].item() == pytest.approx(1.0, abs=1e-5)

    # Reference: the same descriptor computed by hand on ImageNet-normalised pixels.
    def desc(img):
        x = (img + 1) / 2
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = (x - mean[:, None, None]) / std[:, None, None]
        return torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(x[None], 4).flatten(1), dim=1)[0]
    assert s[1].item() == pytest.approx(float(desc(a) @ desc(b)), abs=0.02)
