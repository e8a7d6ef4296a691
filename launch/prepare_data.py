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
import sys
from pathlib import Path

from ingest.prepare import prepare


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
