"""Write datasets to disk for the file formats.

    python launch/prepare_data.py --format parquet --output data/digits_pq [--copies 9]
    python launch/prepare_data.py --from-imagefolder DIR --format parquet --output OUT

Digits (no --from-imagefolder): scikit-learn's digits set as ImageFolder or Parquet (train
and val), so the file formats can be trained on and benchmarked without a download.
`--copies N` adds N augmented copies of every train image (random shift, rotation and
scale, seeded): 1437 * (1 + N) train images. The val split is written once, unaugmented.
Images are grayscale PNG (or JPEG); train on them with e.g. `data=parquet data.path=DIR
data.channels=1 data.image_size=32 data.augment=shift data.val_crop_fraction=1`.

Bring your own data (--from-imagefolder DIR): DIR/{train,val}/<class>/<image> converted to
Parquet shards of --rows-per-file images on a Ray cluster (an embedded local one, or
--ray-address), with OUT/classes.json (class names by label, as data=imagefolder numbers
them) and OUT/manifest.json (counts, and every file that did not decode, which is
skipped). Rerun the same command to finish an interrupted conversion: complete shards are
kept. See ingest/convert.py. The last line printed is the output directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Keep Ray's addresses on loopback (tests/integration/conftest.py says why).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ingest.prepare import prepare  # noqa: E402

MAX_LISTED = 20  # bad files printed; the manifest lists them all


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=("imagefolder", "parquet"))
    parser.add_argument("--output", required=True, help="directory to create")
    parser.add_argument("--from-imagefolder", metavar="DIR", help="convert this ImageFolder")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start one)")
    parser.add_argument("--copies", type=int, default=0, help="digits: augmented copies")
    parser.add_argument("--image-size", type=int, default=32, help="digits")
    parser.add_argument("--encoding", default="png", choices=("png", "jpeg"), help="digits")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="digits")
    parser.add_argument("--seed", type=int, default=0, help="digits split; train shard order")
    parser.add_argument("--rows-per-file", type=int, default=2048, help="parquet")
    parser.add_argument("--rows-per-group", type=int, default=256, help="parquet row group")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> None:
    import ray

    from ingest.convert import plan_conversion, run_conversion
    from job.config import compose
    from job.session import start_ray

    if args.format != "parquet":
        raise ValueError("--from-imagefolder converts to --format parquet only")
    # Listed and checked before Ray starts: a bad source or output fails at once.
    conversion = plan_conversion(source=args.from_imagefolder, output=args.output,
                                 rows_per_file=args.rows_per_file,
                                 rows_per_group=args.rows_per_group, seed=args.seed)
    overrides = [f"ray.address={args.ray_address}"] if args.ray_address else []
    started = start_ray(compose(overrides))
    try:
        result = run_conversion(conversion)
    finally:
        if started:
            ray.shutdown()
    splits = result["splits"]
    for bad in [b for split in splits.values() for b in split["bad"]][:MAX_LISTED]:
        print(f"[raylars] skipped {bad['path']}: {bad['error']}", file=sys.stderr)
    print(f"[raylars] converted {splits['train']['images']} train and {splits['val']['images']} "
          f"val images of {result['num_classes']} classes; {result['num_bad']} bad files "
          f"skipped (listed in {Path(args.output) / 'manifest.json'}); shards written now "
          f"{result['converted_shards']}, already complete {result['complete_shards']}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.from_imagefolder:
            convert(args)
        else:
            counts = prepare(output=args.output, fmt=args.format, copies=args.copies,
                             image_size=args.image_size, encoding=args.encoding,
                             val_fraction=args.val_fraction, seed=args.seed,
                             rows_per_file=args.rows_per_file,
                             rows_per_group=args.rows_per_group)
            print(f"[raylars] wrote {counts['train']} train and {counts['val']} val images "
                  f"({args.format}, {args.encoding})")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(Path(args.output).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
