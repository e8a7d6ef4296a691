"""The Ray Data pipeline shared by every format: which sample each row of an epoch is,
and the map_batches step that loads, decodes and augments it on the cluster's CPUs.

How an epoch reaches the preprocessing. Ray Train gets one Dataset per split when the
trainer is created, and re-executes it every epoch; a streaming_split with preserve_order
hands each worker the same rows (positions) every epoch. A row carries a *position*, not a
sample: `preprocess` maps positions to units (a sample, or a Parquet row group) through a
permutation seeded by (seed, epoch), and seeds each sample's augmentation by
(seed, epoch, sample id). The epoch comes from `PipelineState`, a small actor the driver
creates with the datasets: every worker sets it (`announce_epoch`) before it starts
reading the epoch. Ray Data's split coordinator starts an epoch's execution only after all
workers have asked for it, and the loop only moves on once all workers have finished the
previous epoch (its end-of-epoch allreduce), so every task of epoch e sees e. Hence the
order and augmentation of epoch e on rank r are a pure function of (seed, e, r): resume
and failure recovery replay them exactly, since the restarted workers announce the epoch
they resume at.

Exactly once: every unit appears once per epoch across the streaming split. What is left
out is documented in `steps_per_epoch` (trainers/loop.py): the split's remainder (< world
rows) and each worker's last partial batch; with `shuffle` it is different samples each
epoch. Undecodable samples are dropped here and recorded in `PipelineState`
(`on_error=skip`), or raise naming the file (`on_error=raise`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from ingest.transforms import DecodeError, center, crop_flip, decode, resize_to, sample_rng, shift


@dataclass(frozen=True)
class Sample:
    sample_id: int
    label: int
    # Encoded bytes, a file to read, or an already decoded uint8 (C, H, W) array.
    payload: bytes | Path | np.ndarray
    origin: str  # names the sample in errors: a file path, or "file.parquet row N"


@dataclass(frozen=True)
class TransformSpec:
    train: bool
    augment: str
    size: int
    channels: int
    max_shift_px: int
    min_crop_scale: float
    val_crop_fraction: float
    on_error: str

    def apply(self, sample: Sample, *, seed: int, epoch: int) -> torch.Tensor:
        image = self._load(sample.payload)
        if not self.train:
            return center(image, size=self.size, crop_fraction=self.val_crop_fraction)
        rng = sample_rng(seed=seed, epoch=epoch, sample_id=sample.sample_id)
        if self.augment == "crop_flip":
            return crop_flip(image, rng=rng, size=self.size, min_scale=self.min_crop_scale)
        image = resize_to(image, size=self.size)
        return shift(image, rng=rng, max_px=self.max_shift_px) if self.augment == "shift" else image

    def _load(self, payload) -> torch.Tensor:
        if isinstance(payload, np.ndarray):
            # Copy: arrays from the object store are read-only.
            return torch.from_numpy(np.array(payload))
        if isinstance(payload, Path):
            try:
                payload = payload.read_bytes()
            except OSError as error:
                raise DecodeError(f"cannot read: {error}") from error
        return decode(payload, channels=self.channels)


@ray.remote(num_cpus=0)
class PipelineState:
    """The current epoch, for the preprocessing tasks, and the samples they skipped."""

    def __init__(self):
        self._epoch = 0
        self._skipped: set[tuple[str, int]] = set()  # (split, sample id)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def epoch(self) -> int:
        return self._epoch

    def record_skipped(self, split: str, entries: list[tuple[int, str, str]]) -> None:
        for sample_id, origin, reason in entries:
            # Counted once: a sample fails again in every epoch that reads it.
            if (split, sample_id) not in self._skipped:
                print(f"[raylars] data: skipped undecodable {split} sample {sample_id} "
                      f"({origin}): {reason}", flush=True)
                self._skipped.add((split, sample_id))

    def num_skipped(self) -> int:
        return len(self._skipped)


def announce_epoch(state, *, epoch: int) -> None:
    """Worker side: make `epoch` the one the next execution of the train split preprocesses."""
    if state is not None:
        ray.get(state.set_epoch.remote(epoch))


@functools.lru_cache(maxsize=4)
def unit_order(*, num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Unit at each position for this epoch (cached: every task of an epoch needs it)."""
    if not shuffle:
        return np.arange(num_units)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_units)


def _rows(images: list, labels: list, ids: list, *, spec: TransformSpec) -> dict:
    if not images:
        shape = (0, spec.channels, spec.size, spec.size)
        return {"image": np.empty(shape, np.uint8), "label": np.empty(0, np.int64),
                "id": np.empty(0, np.int64)}
    return {"image": torch.stack(images).numpy(), "label": np.asarray(labels, np.int64),
            "id": np.asarray(ids, np.int64)}


def preprocess(batch: dict, *, source, spec: TransformSpec, state, split: str, seed: int,
               shuffle: bool, chunk_rows: int) -> Iterator[dict]:
    """map_batches: positions -> preprocessed uint8 images, in chunks of chunk_rows."""
    epoch = ray.get(state.epoch.remote()) if spec.train and state is not None else 0
    order = unit_order(num_units=source.num_units, seed=seed, epoch=epoch,
                       shuffle=shuffle and spec.train)
    images, labels, ids, skipped = [], [], [], []
    for sample in source.load(order[batch["id"]]):
        try:
            image = spec.apply(sample, seed=seed, epoch=epoch)
        except DecodeError as error:
            if spec.on_error == "raise":
                raise ValueError(f"data: cannot decode {sample.origin} ({split} sample "
                                 f"{sample.sample_id}): {error} (data.on_error=raise)") from error
            skipped.append((sample.sample_id, sample.origin, str(error)))
            continue
        images.append(image)
        labels.append(sample.label)
        ids.append(sample.sample_id)
        if len(images) == chunk_rows:
            yield _rows(images, labels, ids, spec=spec)
            images, labels, ids = [], [], []
    if skipped and state is not None:
        # Blocking, so the count is complete by the time the rows are consumed.
        ray.get(state.record_skipped.remote(split, skipped))
    if images:
        yield _rows(images, labels, ids, spec=spec)


def build_split(*, source, spec: TransformSpec, state, split: str, seed: int, shuffle: bool,
                num_rows: int, num_blocks: int, rows_per_block: int, chunk_rows: int,
                preprocess_cpus: int | None):
    """The Dataset of one split: a range of positions, preprocessed by map_batches tasks."""
    import ray.data

    blocks = min(source.num_units, max(num_blocks, math.ceil(num_rows / rows_per_block)))
    # The same cap on the range read lets Ray Data fuse it with the map: one task per block.
    positions = ray.data.range(source.num_units, override_num_blocks=blocks,
                               concurrency=preprocess_cpus)
    dataset = positions.map_batches(
        preprocess, batch_size=None, num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=preprocess_cpus),
        fn_kwargs={"source": source, "spec": spec, "state": state, "split": split,
                   "seed": seed, "shuffle": shuffle, "chunk_rows": chunk_rows})
    # Ray Data reserves a share of the CPU budget per operator; with our one fused operator
    # on a small node that held it to one task at a time (2 CPUs, 4 blocks: 2374 -> 2923
    # img/s without it; BENCHMARKS.md). A single operator has nothing to protect it from.
    dataset.context.op_resource_reservation_enabled = False
    return dataset


_OBJECTS: dict[str, object] = {}


def cached_get(ref):
    """ray.get once per process: every task on a node reuses the same table. A plain
    array (a source built without Ray, e.g. in tests) is returned as it is."""
    if isinstance(ref, np.ndarray):
        return ref
    key = ref.hex()
    if key not in _OBJECTS:
        if len(_OBJECTS) >= 8:  # tables of older datasets
            _OBJECTS.pop(next(iter(_OBJECTS)))
        _OBJECTS[key] = ray.get(ref)
    return _OBJECTS[key]


@dataclass(frozen=True)
class ArraySource:
    """Decoded uint8 images (N, C, S, S) in the object store (the digits set)."""

    images: object  # ObjectRef
    labels: np.ndarray
    ids: np.ndarray

    @property
    def num_units(self) -> int:
        return len(self.labels)

    def load(self, units: np.ndarray) -> Iterator[Sample]:
        images = cached_get(self.images)
        for unit in units:
            yield self.sample(int(unit), images)

    def sample(self, unit: int, images: np.ndarray) -> Sample:
        sample_id = int(self.ids[unit])
        return Sample(sample_id, int(self.labels[unit]), images[unit],
                      origin=f"in-memory sample {sample_id}")
