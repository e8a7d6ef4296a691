"""Write scikit-learn's digits set to disk as ImageFolder or Parquet (train and val), so
the file formats can be trained on and benchmarked without a download.

    python launch/prepare_data.py --format parquet --output data/digits_pq [--copies 9]

`--copies N` adds N augmented copies of every train image (random shift, rotation and
scale, seeded), so a larger set exists: 1437 * (1 + N) train images. The val split is
written once, unaugmented. Images are grayscale PNG (or JPEG); train on them with e.g.
`data=parquet data.path=DIR data.channels=1 data.image_size=32 data.augment=shift
data.val_crop_fraction=1`. The last line printed is the output directory.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # replace the script's folder: Ray ships it to workers

from ingest.digits import NUM_DIGITS, load_digits_arrays  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=("imagefolder", "parquet"))
    parser.add_argument("--output", required=True, help="directory to create")
    parser.add_argument("--copies", type=int, default=0, help="augmented copies of train")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--encoding", default="png", choices=("png", "jpeg"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-file", type=int, default=2048, help="parquet")
    parser.add_argument("--rows-per-group", type=int, default=256, help="parquet row group")
    args = parser.parse_args(argv)
    try:
        counts = prepare(output=args.output, fmt=args.format, copies=args.copies,
                         image_size=args.image_size, encoding=args.encoding,
                         val_fraction=args.val_fraction, seed=args.seed,
                         rows_per_file=args.rows_per_file, rows_per_group=args.rows_per_group)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[raylars] wrote {counts['train']} train and {counts['val']} val images "
          f"({args.format}, {args.encoding})")
    print(Path(args.output).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
