"""Per-sample decode and augmentation: shapes, uint8, determinism by (seed, epoch, id)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ingest.transforms import (
    CROP_RATIOS,
    DecodeError,
    center,
    crop_box,
    crop_flip,
    decode,
    sample_rng,
    shift,
)


def png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_gives_uint8_chw_in_the_requested_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = decode(png_bytes(rgb, "RGB"), channels=3)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(rgb))
    assert decode(png_bytes(rgb, "RGB"), channels=1).shape == (1, 20, 30)
    gray = rgb[:, :, 0]
    assert decode(png_bytes(gray, "L"), channels=3).shape == (3, 20, 30)


@pytest.mark.parametrize("data", [b"", b"not an image", png_bytes(np.zeros((8, 8), np.uint8), "L")[:40]])
def test_decode_of_broken_bytes_raises_decode_error(data):
    with pytest.raises(DecodeError):
        decode(data, channels=3)


@pytest.mark.parametrize("height,width", [(64, 64), (30, 200), (200, 30), (9, 9)])
def test_crop_box_lies_inside_the_image_with_bounded_ratio(height, width):
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = crop_box(rng, height=height, width=width, min_scale=0.08)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert h >= 1 and w >= 1
        if (height, width) == (64, 64):
            assert CROP_RATIOS[0] - 0.1 <= w / h <= CROP_RATIOS[1] + 0.1
            assert h * w >= 0.08 * height * width * 0.8


def test_crop_flip_is_a_function_of_seed_epoch_and_sample_id():
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 50, 40), dtype=np.uint8))

    def augment(seed, epoch, sample_id):
        return crop_flip(image, rng=sample_rng(seed=seed, epoch=epoch, sample_id=sample_id),
                         size=16, min_scale=0.08)

    first = augment(0, 3, 7)
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    assert torch.equal(first, augment(0, 3, 7))
    assert not torch.equal(first, augment(0, 4, 7))  # another epoch, another crop
    assert not torch.equal(first, augment(1, 3, 7))


def test_shift_moves_content_and_fills_zeros():
    image = torch.zeros(1, 9, 9, dtype=torch.uint8)
    image[0, 4, 4] = 255
    seen = set()
    for sample_id in range(50):
        out = shift(image, rng=sample_rng(seed=0, epoch=0, sample_id=sample_id), max_px=2)
        assert out.dtype == torch.uint8 and out.sum() == 255
        row, col = (int(v) for v in (out[0] == 255).nonzero()[0])
        assert abs(row - 4) <= 2 and abs(col - 4) <= 2
        seen.add((row, col))
    assert len(seen) > 5
    assert torch.equal(shift(image, rng=sample_rng(seed=0, epoch=0, sample_id=0), max_px=0), image)


def test_center_resizes_short_side_then_crops():
    image = torch.arange(3 * 40 * 80, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 80)
    out = center(image, size=28, crop_fraction=0.875)
    assert out.shape == (3, 28, 28) and out.dtype == torch.uint8
    assert center(image, size=28, crop_fraction=1.0).shape == (3, 28, 28)
