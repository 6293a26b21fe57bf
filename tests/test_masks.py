"""Masks for partial memorization: reading one as its image is read, and the masked pixel similarity."""

import numpy as np
import pytest
import torch
from PIL import Image

from invmm.data.masks import load_mask, masked_fraction
from invmm.errors import InvMMInputError
from invmm.functional import concordance_correlation
from invmm.similarity.pixel import PixelSimilarity


def test_a_mask_is_cropped_and_resized_as_its_image_and_bad_masks_name_the_file(tmp_path):
    m = np.zeros((12, 16), np.uint8)  # 16 wide, 12 high: the centre crop keeps columns 2..13
    m[:, :8] = 255
    Image.fromarray(m).save(tmp_path / "left.png")
    mask = load_mask(tmp_path / "left.png", size=12, image_size=(16, 12))
    assert mask.shape == (1, 12, 12) and mask[0, :, :5].min() == 1 and mask[0, :, 7:].max() < 0.05
    assert masked_fraction(mask) == pytest.approx(6 / 12, abs=0.04)
    with pytest.raises(InvMMInputError, match=r"left.png: the mask is 16x12, its image 8x8"):
        load_mask(tmp_path / "left.png", size=8, image_size=(8, 8))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InvMMInputError, match=r"empty.png: the mask is empty"):
        load_mask(tmp_path / "empty.png", size=8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InvMMInputError, match=r"bad.png: not a readable mask image"):
        load_mask(tmp_path / "bad.png", size=8)
    with pytest.raises(InvMMInputError, match=r"gone.png: no such mask file"):
        load_mask(tmp_path / "gone.png", size=8)


def test_masked_pixel_similarity_compares_the_region_only_and_all_ones_is_no_mask():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 8, 8, generator=g) * 2 - 1
    samples = target.repeat(3, 1, 1, 1)
    samples[:, :, :, 4:] = torch.rand(3, 1, 8, 4, generator=g) * 2 - 1  # the right half differs
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1
    sim = PixelSimilarity()
    assert torch.allclose(sim(samples, target, mask), torch.ones(3))  # a copy of the masked left half
    assert (sim(samples, target) < 0.9).all()
    ones = torch.ones(1, 8, 8)
    assert torch.allclose(sim(samples, target, ones), sim(samples, target), atol=1e-6)
    ref = concordance_correlation(samples[:, :, :, :4].reshape(3, -1), target[:, :, :4].reshape(1, -1).expand(3, -1))
    assert torch.allclose(sim(samples, target, mask), ref, atol=1e-6)  # weighted = the region cut out
