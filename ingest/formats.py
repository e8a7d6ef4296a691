"""The data formats `data.name` selects, in one registry: `FORMATS` maps each name to a
`Format` (its split sizes before Ray starts, its Datasets builder, whether it reads
`data.path`). The config check (ingest/config.py) and the builders (ingest/__init__.py)
read this one table, so a name cannot be valid to one and unknown to the other.

The callables import their modules only when called: ingest/config.py imports this
table, and validating a config must not pull in torch or Ray. Since ingest/config.py
imports this module, neither it nor the builders import ingest/config.py (not even for
type hints: that would close a cycle); `config` below is always its DataConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from common.registry import Registry
from ingest.info import DatasetInfo


@dataclass(frozen=True)
class Format:
    # (num_train, num_val) from the config alone; the file formats list data.path for it,
    # so a bad path fails before Ray starts.
    sizes: Callable[..., tuple[int, int]]
    # (config, *, seed) -> ({"train": Dataset, "val": Dataset}, DatasetInfo); needs Ray.
    build: Callable[..., tuple[dict, DatasetInfo]]
    reads_path: bool = False
    # Held decoded in memory, so the workers can preprocess it themselves (ingest/memory.py).
    in_memory: bool = False

    def __call__(self, config, *, seed: int, in_workers: bool = False) -> tuple[dict, DatasetInfo]:
        """The registry's builder: `FORMATS.build(name, config=..., seed=...)`.
        `in_workers` (in-memory formats only): build no Datasets, only what the workers
        preprocess themselves (DatasetInfo.in_memory)."""
        if not in_workers:
            return self.build(config, seed=seed)
        assert self.in_memory, "only an in-memory format is preprocessed in the workers"
        return self.build(config, seed=seed, in_workers=True)


FORMATS = Registry("dataset", key="data.name")


def format_of(name: str) -> Format:
    """ValueError naming data.name and the known names when `name` is not registered."""
    return FORMATS.get(name).builder


def _digits_sizes(config) -> tuple[int, int]:
    from ingest.digits import digits_sizes

    return digits_sizes(val_fraction=config.val_fraction)


def _digits(config, *, seed: int, in_workers: bool = False) -> tuple[dict, DatasetInfo]:
    from ingest.datasets import digits_datasets

    return digits_datasets(config, seed=seed, in_workers=in_workers)


def _synthetic_sizes(config) -> tuple[int, int]:
    return config.num_train_samples, config.num_val_samples


def _synthetic(config, *, seed: int) -> tuple[dict, DatasetInfo]:
    from ingest.datasets import synthetic_datasets

    return synthetic_datasets(config, seed=seed)


def _file_format(reader: Callable[[], ModuleType]) -> Format:
    """A format read from data.path: `reader()` is its listing module (the reader
    interface of ingest/imagefolder.py), fed to the shared pipeline."""

    def sizes(config) -> tuple[int, int]:
        from ingest.datasets import file_sizes

        return file_sizes(config, reader=reader())

    def build(config, *, seed: int) -> tuple[dict, DatasetInfo]:
        from ingest.datasets import file_datasets

        return file_datasets(config, reader=reader(), seed=seed)

    return Format(sizes=sizes, build=build, reads_path=True)


def _imagefolder() -> ModuleType:
    from ingest import imagefolder

    return imagefolder


def _parquet() -> ModuleType:
    from ingest import parquet

    return parquet


# The unknown-name error lists the names in this order.
FORMATS.register("digits", builder=Format(sizes=_digits_sizes, build=_digits, in_memory=True))
FORMATS.register("synthetic", builder=Format(sizes=_synthetic_sizes, build=_synthetic))
FORMATS.register("imagefolder", builder=_file_format(_imagefolder))
FORMATS.register("parquet", builder=_file_format(_parquet))
