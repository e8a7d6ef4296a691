"""Parquet datasets: `data.path/{train,val}/*.parquet` with columns `image` (encoded image
bytes) and `label` (integer), and optionally `id` (the sample id; else the row's index in
the split, counting through the sorted files).

The unit the pipeline shuffles and hands to a task is one row group: reading a whole row
group is what Parquet does efficiently, and the worker's local shuffle buffer mixes the
samples of several row groups. The driver reads only metadata and the label column.

Reader interface (shared with ingest/imagefolder.py, used by ingest/datasets.py):
`list_dataset`, `num_classes_of`, `make_source` and the listing's `num_rows`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.validation import require
from ingest.listing import SPLITS, split_dir
from ingest.pipeline import Sample

REQUIRED_COLUMNS = ("image", "label")


@dataclass(frozen=True)
class ParquetListing:
    """One entry per non-empty row group, in file order."""

    files: tuple[str, ...]
    file_index: np.ndarray
    row_group: np.ndarray
    first_row: np.ndarray  # row in its file
    first_id: np.ndarray  # row in the split
    num_rows: int
    max_label: int
    has_id: bool


def _check_schema(path: Path, schema) -> bool:
    import pyarrow as pa

    for column in REQUIRED_COLUMNS:
        require(column in schema.names,
                f"data.path: {path} has no '{column}' column (columns: {schema.names}); "
                f"Parquet data needs 'image' (encoded bytes) and 'label'")
    image_type, label_type = schema.field("image").type, schema.field("label").type
    require(pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type),
            f"data.path: column 'image' of {path} must hold encoded image bytes, "
            f"not {image_type}")
    require(pa.types.is_integer(label_type),
            f"data.path: column 'label' of {path} must be integers, not {label_type}")
    return "id" in schema.names


def list_split(*, root: str, split: str) -> ParquetListing:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    directory = split_dir(root, split, layout="*.parquet")
    files = sorted(directory.glob("*.parquet"))
    require(bool(files), f"data.path: {directory} has no .parquet files")
    units, max_label, total, has_id = [], -1, 0, []
    for index, path in enumerate(files):
        parquet = pq.ParquetFile(path)
        has_id.append(_check_schema(path, parquet.schema_arrow))
        labels = parquet.read(columns=["label"]).column("label")
        if len(labels):
            low, high = pc.min_max(labels).values()
            require(low.as_py() >= 0, f"data.path: column 'label' of {path} has a negative "
                                      f"label ({low.as_py()})")
            max_label = max(max_label, high.as_py())
        first_row = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if rows:
                units.append((index, group, first_row, total + first_row))
            first_row += rows
        total += first_row
    require(total > 0, f"data.path: the .parquet files in {directory} have no rows")
    require(len(set(has_id)) == 1, f"data.path: some files in {directory} have an 'id' column "
                                   "and some do not")
    columns = np.asarray(units, np.int64).T
    return ParquetListing(tuple(str(f) for f in files), columns[0], columns[1], columns[2],
                          columns[3], total, max_label, has_id[0])


def list_dataset(*, root: str, num_classes: int | None) -> dict[str, ParquetListing]:
    """Both splits, checked: ValueError naming the path/column for bad files or labels."""
    listings = {split: list_split(root=root, split=split) for split in SPLITS}
    limit = num_classes if num_classes is not None else listings["train"].max_label + 1
    for split, listing in listings.items():
        require(listing.max_label < limit,
                f"data.path: column 'label' in {Path(root) / split} has label "
                f"{listing.max_label}, outside the class count {limit}"
                + (" (data.num_classes)" if num_classes is not None else " (train labels)"))
    return listings


def num_classes_of(listings: dict[str, ParquetListing]) -> int:
    return listings["train"].max_label + 1


def make_source(listing: ParquetListing) -> ParquetSource:
    return ParquetSource(listing)


@dataclass(frozen=True)
class ParquetSource:
    """One row group per unit."""

    listing: ParquetListing

    @property
    def num_units(self) -> int:
        return len(self.listing.row_group)

    @property
    def unit_rows(self) -> np.ndarray:
        """Rows of each row group (ingest/order.py lays them end to end per epoch)."""
        listing = self.listing
        return np.diff(np.append(listing.first_id, listing.num_rows))

    def load(self, units: np.ndarray) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        listing = self.listing
        columns = list(("image", "label", "id") if listing.has_id else ("image", "label"))
        for unit in units:
            path = listing.files[listing.file_index[unit]]
            table = pq.ParquetFile(path).read_row_group(int(listing.row_group[unit]),
                                                        columns=columns)
            images = table.column("image").to_pylist()
            labels = table.column("label").to_numpy()
            first_row, first_id = int(listing.first_row[unit]), int(listing.first_id[unit])
            ids = (table.column("id").to_numpy() if listing.has_id
                   else np.arange(first_id, first_id + len(labels)))
            for row, (data, label, sample_id) in enumerate(zip(images, labels, ids, strict=True)):
                yield Sample(int(sample_id), int(label), data if data is not None else b"",
                             origin=f"{path} row {first_row + row}")
