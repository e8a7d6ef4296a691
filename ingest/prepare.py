"""Writes scikit-learn's digits set to disk as ImageFolder or Parquet (train and val), so
the file formats can be trained on and benchmarked without a download. The CLI is
launch/prepare_data.py; benchmarks and tests call `prepare` directly.

`copies` adds that many augmented copies of every train image (random shift, rotation and
scale, seeded): 1437 * (1 + copies) train images. The val split is written once,
unaugmented. Images are grayscale PNG (or JPEG); a copy's sample id is
copy * 1797 + the digit's id, so ids stay unique across copies.

`write_photos` writes photo-like RGB JPEGs instead (ImageNet's typical 500x375 by default:
smooth colour fields plus texture, about a photo's decode cost), for the decode benchmarks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ingest.digits import NUM_DIGITS, load_digits_arrays


def jitter(image: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """A plausible new digit: small random rotation, scale and shift of a (1, S, S) image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    size = image.shape[-1]
    out = TF.affine(torch.from_numpy(image), angle=float(rng.uniform(-12, 12)),
                    translate=[int(v) for v in rng.integers(-size // 10, size // 10 + 1, 2)],
                    scale=float(rng.uniform(0.9, 1.1)), shear=[0.0],
                    interpolation=InterpolationMode.BILINEAR)
    return out.numpy()


def encode(image: np.ndarray, *, encoding: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[0], mode="L").save(buffer, format=encoding.upper(),
                                             **({"quality": 95} if encoding == "jpeg" else {}))
    return buffer.getvalue()


def samples(*, split_arrays: tuple, copies: int, seed: int):
    """(id, label, uint8 image) of a split: the originals, then each augmented copy."""
    images, labels, ids = split_arrays
    for copy in range(copies + 1):
        rng = np.random.default_rng([seed, copy])
        for image, label, digit_id in zip(images, labels, ids, strict=True):
            out = image if copy == 0 else jitter(image, rng=rng)
            yield int(copy * NUM_DIGITS + digit_id), int(label), out


def write_imagefolder(rows, *, directory: Path, encoding: str) -> int:
    count = 0
    for sample_id, label, image in rows:
        folder = directory / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "jpg" if encoding == "jpeg" else "png"
        (folder / f"{sample_id:07d}.{suffix}").write_bytes(encode(image, encoding=encoding))
        count += 1
    return count


def write_parquet(rows, *, directory: Path, encoding: str, rows_per_file: int,
                  rows_per_group: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    buffer, count, part = [], 0, 0

    def flush():
        nonlocal buffer, part
        table = pa.table({"image": pa.array([r[2] for r in buffer], pa.binary()),
                          "label": pa.array([r[1] for r in buffer], pa.int64()),
                          "id": pa.array([r[0] for r in buffer], pa.int64())})
        pq.write_table(table, directory / f"part-{part:05d}.parquet", row_group_size=rows_per_group)
        buffer, part = [], part + 1

    for sample_id, label, image in rows:
        buffer.append((sample_id, label, encode(image, encoding=encoding)))
        count += 1
        if len(buffer) == rows_per_file:
            flush()
    if buffer:
        flush()
    return count


def prepare(*, output: str, fmt: str, copies: int = 0, image_size: int = 32,
            encoding: str = "png", val_fraction: float = 0.2, seed: int = 0,
            rows_per_file: int = 2048, rows_per_group: int = 256) -> dict[str, int]:
    """Write the dataset; return the image count of each split."""
    if fmt not in ("imagefolder", "parquet"):
        raise ValueError(f"--format must be imagefolder or parquet, got {fmt!r}")
    if encoding not in ("png", "jpeg"):
        raise ValueError(f"--encoding must be png or jpeg, got {encoding!r}")
    if copies < 0 or image_size < 8:
        raise ValueError(f"--copies must be >= 0 and --image-size >= 8 (got {copies}, {image_size})")
    root = Path(output)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"--output {root} exists and is not empty")
    arrays = load_digits_arrays(image_size=image_size, val_fraction=val_fraction, seed=seed)
    counts = {}
    for split in ("train", "val"):
        rows = samples(split_arrays=arrays[split], copies=copies if split == "train" else 0,
                       seed=seed)
        if fmt == "imagefolder":
            counts[split] = write_imagefolder(rows, directory=root / split, encoding=encoding)
        else:
            counts[split] = write_parquet(rows, directory=root / split, encoding=encoding,
                                          rows_per_file=rows_per_file,
                                          rows_per_group=rows_per_group)
    return counts


def photo_like(rng: np.random.Generator, *, width: int, height: int) -> np.ndarray:
    """An RGB (height, width, 3) uint8 image with photo-like statistics: a smooth colour
    field (bicubic from 16x12 random colours) plus Gaussian texture."""
    from PIL import Image

    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    return np.clip(field + rng.normal(0, 18, field.shape), 0, 255).astype(np.uint8)


def write_photos(*, output: str, count: int, width: int = 500, height: int = 375,
                 classes: int = 10, quality: int = 90, seed: int = 0) -> list[str]:
    """`count` photo-like JPEGs as an ImageFolder train/ split (class = index % classes);
    returns their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        folder = Path(output) / "train" / f"{index % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:07d}.jpg"
        Image.fromarray(photo_like(rng, width=width, height=height)).save(
            path, format="JPEG", quality=quality)
        paths.append(str(path))
    return paths
