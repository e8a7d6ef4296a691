"""Checks shared by the file formats' listings (ingest/imagefolder.py, ingest/parquet.py):
`data.path` must be a directory holding one folder per split."""

from __future__ import annotations

from pathlib import Path

from common.validation import require

SPLITS = ("train", "val")


def split_dir(root: str, split: str, *, layout: str) -> Path:
    """`root/split`, checked. `layout` is what the format expects inside it, for the error."""
    require(Path(root).is_dir(), f"data.path: no such directory: {root}")
    directory = Path(root) / split
    require(directory.is_dir(),
            f"data.path: {root} has no '{split}' folder (expected {directory}/{layout})")
    return directory
