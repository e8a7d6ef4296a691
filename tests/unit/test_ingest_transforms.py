"""Per-sample decode and augmentation: shapes, uint8, determinism by (seed, epoch, id), and
JPEG decode at reduced scale against full decode + resize."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ingest.prepare import photo_like
from ingest.transforms import (
    CROP_RATIOS,
    DecodeError,
    center,
    center_box,
    crop_box,
    crop_flip,
    decode,
    decoded_box,
    draft_request,
    encoded_center,
    encoded_crop_flip,
    open_encoded,
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


# ---- encoded images decoded at the size the crop needs --------------------------------

def jpeg_bytes(array: np.ndarray, *, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


PHOTO = jpeg_bytes(photo_like(np.random.default_rng(3), width=1000, height=750))


def drafted_size(data: bytes, *, box, size: int) -> tuple[int, int]:
    image = open_encoded(data)
    width, height = image.size
    image.draft("RGB", draft_request(width=width, height=height, box=box, size=size))
    return image.size


@pytest.mark.parametrize("width,height,box,size,expected", [
    (1000, 750, (0, 0, 750, 1000), 224, (500, 375)),  # 750 / 4 < 224 <= 750 / 2: 1/2
    (500, 375, (0, 0, 375, 500), 224, (500, 375)),  # 375 / 2 < 224: full size
    (1000, 750, (100, 100, 500, 500), 224, (500, 375)),  # 500 / 2 >= 224, / 4 is not
    (4000, 3000, (0, 0, 3000, 3000), 224, (500, 375)),  # the smallest libjpeg scale, 1/8
])
def test_draft_picks_the_smallest_scale_keeping_the_box_at_least_the_output(
        width, height, box, size, expected):
    data = jpeg_bytes(np.zeros((height, width, 3), np.uint8) + 90)
    decoded = drafted_size(data, box=box, size=size)
    scale = width / decoded[0]
    _, _, box_h, box_w = box
    assert box_h / scale >= size and box_w / scale >= size
    assert decoded == expected


def test_decoded_box_maps_full_coordinates_to_the_scaled_image():
    assert decoded_box((10, 20, 100, 200), scale=2) == (10.0, 5.0, 110.0, 55.0)
    assert center_box(height=375, width=500, size=224, crop_fraction=0.875) == pytest.approx(
        ((375 - 328.125) / 2, (500 - 328.125) / 2, 328.125, 328.125))
    assert center_box(height=30, width=40, size=16, crop_fraction=1.0) == (0, 0, 30, 40)


def test_center_from_a_drafted_decode_matches_full_decode_then_resize():
    # val of a 1000x750 photo at 224: decoded at 1/2 (the 656-px central box is 328 px).
    full = center(decode(PHOTO, channels=3), size=224, crop_fraction=0.875).numpy()
    fast = encoded_center(PHOTO, size=224, crop_fraction=0.875, channels=3)
    assert fast.shape == (3, 224, 224) and fast.dtype == np.uint8
    assert psnr(fast, full) > 30 and np.abs(fast.astype(int) - full).mean() < 4


def test_crop_flip_from_a_drafted_decode_matches_the_full_decode_path():
    image = decode(PHOTO, channels=3)
    for sample_id in range(6):
        rng = sample_rng(seed=0, epoch=1, sample_id=sample_id)
        full = crop_flip(image, rng=rng, size=112, min_scale=0.08).numpy()
        rng = sample_rng(seed=0, epoch=1, sample_id=sample_id)
        fast = encoded_crop_flip(PHOTO, rng=rng, size=112, min_scale=0.08, channels=3)
        # Same box and flip (same draws), decoded at up to 1/4 scale.
        assert psnr(fast, full) > 28 and np.abs(fast.astype(int) - full).mean() < 5


def test_encoded_paths_are_deterministic_and_read_gray_and_png():
    def augment(epoch):
        rng = sample_rng(seed=0, epoch=epoch, sample_id=7)
        return encoded_crop_flip(PHOTO, rng=rng, size=32, min_scale=0.08, channels=3)

    assert np.array_equal(augment(0), augment(0)) and not np.array_equal(augment(0), augment(1))
    gray = encoded_center(PHOTO, size=32, crop_fraction=0.875, channels=1)
    assert gray.shape == (1, 32, 32)
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    same = encoded_center(png_bytes(rgb, "RGB"), size=20, crop_fraction=1.0, channels=3)
    assert same.shape == (3, 20, 20)
    exact = encoded_center(png_bytes(rgb[:, :20], "RGB"), size=20, crop_fraction=1.0, channels=3)
    assert np.array_equal(exact.transpose(1, 2, 0), rgb[:, :20])  # no resize at the same size


@pytest.mark.parametrize("data", [b"", b"not an image", PHOTO[: len(PHOTO) // 3]])
def test_encoded_paths_raise_decode_error_on_broken_bytes(data):
    with pytest.raises(DecodeError):
        encoded_center(data, size=16, crop_fraction=0.875, channels=3)



GRAYSCALE_CHECK = """
import sys, warnings
import numpy as np, torch
from ingest.pipeline import Sample, TransformSpec
from ingest.transforms import encoded_center
payload = sys.stdin.buffer.read()
spec = TransformSpec(train=sys.argv[1] == "train", augment="shift", size=16, channels=1,
                     max_shift_px=0, min_crop_scale=0.08, val_crop_fraction=1.0, on_error="raise")
warnings.simplefilter("error")
image = spec.apply(Sample(sample_id=3, label=1, payload=payload, origin="test"), seed=0, epoch=0)
expected = encoded_center(payload, size=16, crop_fraction=1.0, channels=1)
assert image.shape == (1, 16, 16) and image.dtype == torch.uint8
assert np.array_equal(image.numpy(), expected)  # shift 0: the resize alone
"""


@pytest.mark.parametrize("split", ["train", "val"])
def test_grayscale_png_preprocesses_without_wrapping_a_read_only_buffer(split):
    """A grayscale decode is a view of PIL's read-only buffer: torch warns when it wraps one
    (writes through it are undefined), so the spec must copy it. torch warns once per
    process, hence a fresh interpreter per split."""
    digit = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    result = subprocess.run([sys.executable, "-c", GRAYSCALE_CHECK, split],
                            input=png_bytes(digit, "L"), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
