"""ImageFolder datasets (the ImageNet layout): `data.path/{train,val}/<class>/<image>`.

Classes are the sorted folder names under `train/`; a sample's id is its index in the
sorted file listing of its split. The listing is made on the driver (and checked before
Ray starts); the files are read and decoded by the preprocessing tasks.

Reader interface (shared with ingest/parquet.py, used by ingest/datasets.py):
`list_dataset`, `num_classes_of`, `make_source` and the listing's `num_rows`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.validation import require
from ingest.listing import split_dir
from ingest.pipeline import Sample, cached_get

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderListing:
    classes: tuple[str, ...]
    paths: np.ndarray  # str, sorted by (class, file name)
    labels: np.ndarray  # int64

    @property
    def num_rows(self) -> int:
        return len(self.labels)


def list_split(*, root: str, split: str, classes: tuple[str, ...] | None = None) -> FolderListing:
    """Sorted listing of one split. `classes`: the train classes, which val must use."""
    directory = split_dir(root, split, layout="<class>/<image>")
    folders = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    require(bool(folders), f"data.path: {directory} has no class folders")
    if classes is None:
        classes = tuple(folders)
    unknown = sorted(set(folders) - set(classes))
    require(not unknown, f"data.path: {directory} has class folders not in train/: {unknown}")
    paths, labels = [], []
    for name in folders:
        files = sorted(entry.name for entry in os.scandir(directory / name)
                       if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES))
        paths.extend(str(directory / name / file) for file in files)
        labels.extend([classes.index(name)] * len(files))
    require(bool(paths), f"data.path: {directory} has no images "
                         f"({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return FolderListing(classes, np.asarray(paths), np.asarray(labels, np.int64))


def list_dataset(*, root: str, num_classes: int | None) -> dict[str, FolderListing]:
    """Both splits, checked: ValueError naming the path for a missing or empty tree."""
    train = list_split(root=root, split="train")
    require(num_classes is None or len(train.classes) <= num_classes,
            f"data.num_classes ({num_classes}) is smaller than the {len(train.classes)} class "
            f"folders in {Path(root) / 'train'}: labels would fall outside the class count")
    return {"train": train, "val": list_split(root=root, split="val", classes=train.classes)}


def num_classes_of(listings: dict[str, FolderListing]) -> int:
    return len(listings["train"].classes)


def make_source(listing: FolderListing) -> FolderSource:
    return FolderSource.put(listing)


@dataclass(frozen=True)
class FolderSource:
    """One sample per unit: (paths, labels) arrays in the object store."""

    table: object  # ObjectRef of (paths, labels)
    num_units: int

    @classmethod
    def put(cls, listing: FolderListing) -> FolderSource:
        import ray

        return cls(ray.put((listing.paths, listing.labels)), len(listing.labels))

    def load(self, units: np.ndarray) -> Iterator[Sample]:
        paths, labels = cached_get(self.table)
        for unit in units:
            path = str(paths[unit])
            yield Sample(int(unit), int(labels[unit]), Path(path), origin=path)
