import numpy as np
import pytest
import torch

from invmm.similarity import SSCDSimilarity
from invmm.similarity.sscd import masked_views


def photo(name, size):
    from PIL import Image
    from skimage import data

    arr = getattr(data, name)()
    im = Image.fromarray(arr).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1)


@pytest.fixture(scope="module")
def sscd():
    return SSCDSimilarity(resize=64)


def test_masked_views_matches_a_hand_built_reference():
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(2, 3, 9, 9, generator=g) * 2 - 1
    target = torch.rand(3, 9, 9, generator=g) * 2 - 1
    # An L shape with a soft edge, away from the borders: its box is rows 2..6, columns 1..5.
    m = np.zeros((9, 9), np.float32)
    m[2:7, 1:3] = 1.0
    m[5:7, 3:6] = 1.0
    m[2, 3] = 0.25
    m[4, 3] = 0.5
    mask = torch.from_numpy(m)[None]

    s, t = samples.numpy(), target.numpy()
    r0, r1, c0, c1 = 9, -1, 9, -1
    for r in range(9):
        for c in range(9):
            if m[r, c] > 0:
                r0, r1, c0, c1 = min(r0, r), max(r1, r), min(c0, c), max(c1, c)
    ref_samples = np.zeros((2, 3, r1 - r0 + 1, c1 - c0 + 1), np.float32)
    ref_target = np.zeros((3, r1 - r0 + 1, c1 - c0 + 1), np.float32)
    for ch in range(3):
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                ref_target[ch, r - r0, c - c0] = t[ch, r, c]
                for n in range(2):
                    ref_samples[n, ch, r - r0, c - c0] = m[r, c] * s[n, ch, r, c] + (1 - m[r, c]) * t[ch, r, c]

    target_view, sample_views = masked_views(samples, target, mask)
    assert (r0, r1, c0, c1) == (2, 6, 1, 5)
    assert target_view.shape == (3, 5, 5) and sample_views.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(target_view.numpy(), ref_target, atol=1e-6)
    np.testing.assert_allclose(sample_views.numpy(), ref_samples, atol=1e-6)
    # A [S, S] mask means the same as [1, S, S].
    t2, s2 = masked_views(samples, target, mask[0])
    assert torch.equal(t2, target_view) and torch.equal(s2, sample_views)


def test_an_all_ones_mask_is_the_unmasked_check(sscd):
    astronaut, coffee = photo("astronaut", 64), photo("coffee", 64)
    g = torch.Generator().manual_seed(1)
    noisy = (astronaut + torch.randn(astronaut.shape, generator=g) * 0.1).clamp(-1, 1)
    samples = torch.stack([noisy, coffee])
    assert torch.equal(sscd(samples, astronaut, mask=torch.ones(1, 64, 64)), sscd(samples, astronaut))


def test_only_the_masked_region_counts(sscd):
    astronaut, coffee = photo("astronaut", 64), photo("coffee", 64)
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:40, 16:48] = 1.0
    # The astronaut's region pasted into the coffee photo: a copy of the region, not of the image.
    sample = mask * astronaut + (1 - mask) * coffee
    masked = sscd(sample[None], astronaut, mask=mask).item()
    whole = sscd(sample[None], astronaut).item()
    assert masked > 0.99
    assert whole < masked - 0.1


def test_an_empty_mask_is_refused(sscd):
    astronaut = photo("astronaut", 16)
    with pytest.raises(ValueError, match="no pixel above 0"):
        masked_views(astronaut[None], astronaut, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="no pixel above 0"):
        sscd(astronaut[None], astronaut, mask=torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="do not match"):
        masked_views(astronaut[None], astronaut, torch.ones(1, 8, 8))


def test_region_boxes_split_a_mask_into_boxes_at_least_half_region():
    from invmm.similarity.sscd import MAX_BOXES, MIN_BOX_FILL, mask_problem, region_boxes

    square = torch.zeros(1, 16, 16)
    square[:, 4:12, 4:12] = 1
    assert region_boxes(square) == [(4, 12, 4, 12)]
    yy, xx = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    disc = (((yy - 8) ** 2 + (xx - 8) ** 2).sqrt() < 6).float()[None]  # a compact region: one box, as before
    assert len(region_boxes(disc)) == 1
    corners = torch.zeros(1, 16, 16)
    corners[:, :8, :4] = 1
    corners[:, 8:, 12:] = 1
    assert region_boxes(corners) == [(0, 8, 0, 4), (8, 16, 12, 16)]  # one box each, not one box of 25% region
    ell = torch.zeros(1, 16, 16)
    ell[:, :, :2] = 1
    ell[:, 14:, :] = 1
    boxes = region_boxes(ell)
    assert len(boxes) > 1
    covered = torch.zeros(16, 16)
    for r0, r1, c0, c1 in boxes:
        assert float(ell[0, r0:r1, c0:c1].mean()) >= MIN_BOX_FILL
        covered[r0:r1, c0:c1] += 1
    assert bool((covered[ell[0] > 0] == 1).all())  # every region pixel in exactly one box
    specks = torch.zeros(1, 16, 16)
    specks[:, ::3, ::3] = 1  # 36 isolated pixels
    assert len(region_boxes(specks)) == 36 > MAX_BOXES and "36 boxes" in mask_problem(specks)
    assert mask_problem(ell) is None


def test_a_mask_of_two_corners_is_judged_box_by_box(sscd):
    """Fails before the fix: one box around two opposite corners is 3/4 the target's own pixels, so another
    photo passed as a copy."""
    astronaut, coffee, rocket = photo("astronaut", 64), photo("coffee", 64), photo("rocket", 64)
    corners = torch.zeros(1, 64, 64)
    corners[:, :32, :16] = 1
    corners[:, 32:, 48:] = 1
    negative = sscd(coffee[None], astronaut, mask=corners).item()
    target_view, sample_view = masked_views(coffee[None], astronaut, corners)  # the one box of before
    assert sscd._cosine(sample_view, target_view).item() >= 0.5  # 0.58 here: the false copy the boxes remove
    assert negative < 0.5  # 0.03 here
    copy = corners * astronaut + (1 - corners) * rocket  # both regions copied into another photo
    assert sscd(copy[None], astronaut, mask=corners).item() > 0.9
    half = torch.zeros(1, 64, 64)
    half[:, :32, :16] = 1
    only_one = half * astronaut + (1 - half) * coffee  # one region copied, the other not: not a copy
    assert sscd(only_one[None], astronaut, mask=corners).item() < 0.5
