"""The Ray Data pipeline shared by every format: which sample each row of an epoch is,
and the map_batches step that loads, decodes and augments it on the cluster's CPUs.

How an epoch reaches the preprocessing. A split's Dataset is a range of *block indices*,
one per preprocessing task, cut for the CPUs the pipeline may use (ingest/sizing.py).
Val: block b covers the unit positions [bounds[b], bounds[b+1]) of the rank's slice.
Train: each rank has its own Dataset (`build_train_shard`), whose blocks cover whole
optimizer steps of that rank's share of every global batch (ingest/order.py): step s of
an epoch trains the epoch's sequence positions [s * G, (s + 1) * G), whatever the world
size. `preprocess` maps positions to units (a sample, or rows of a Parquet row group)
through a permutation seeded by (seed, epoch), and seeds each sample's augmentation by
(seed, epoch, sample id). Ray Train re-executes each rank's Dataset every epoch. The
epoch, and the first step of a resumed one, come from `PipelineState`, a small actor the
driver creates with the datasets: every worker sets them (`announce_epoch`) before it
starts reading the epoch; the loop only moves on once all workers have finished the
previous epoch (its end-of-epoch allreduce), so every task of epoch e sees e. Hence the
samples of step s of epoch e are a pure function of (seed, e, s, G): a run resumed at
step s, with any world size, trains the rest of the epoch and nothing twice.

Exactly once: every position below `steps * G` is trained once per epoch; what is left
out is the last `num_rows % G` positions (different samples each epoch, with shuffle), or
the steps past `trainer.max_steps_per_epoch`. Validation leaves nothing out: each worker
reads its own slice.
Undecodable samples are dropped here and recorded in `PipelineState` (`on_error=skip`), or
raise naming the file (`on_error=raise`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from ingest.order import StepSlices, locate, unit_order
from ingest.sizing import BlockSizing
from ingest.transforms import (
    DecodeError,
    center,
    crop_flip,
    encoded_center,
    encoded_crop_flip,
    resize_to,
    sample_rng,
    shift,
)


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
        """The sample preprocessed: uint8 (C, size, size), contiguous."""
        if isinstance(sample.payload, np.ndarray):
            # Copy: arrays from the object store are read-only.
            return self._decoded(torch.from_numpy(np.array(sample.payload)), sample,
                                 seed=seed, epoch=epoch)
        # Owned and writable: a grayscale decode can be a view of PIL's read-only buffer.
        return torch.from_numpy(np.require(self.encoded(sample, seed=seed, epoch=epoch),
                                           requirements=("C", "W")))

    def write(self, sample: Sample, out: np.ndarray, *, seed: int, epoch: int) -> None:
        """`apply` into `out` (a row of the batch): one copy from the resized image."""
        if isinstance(sample.payload, np.ndarray):
            out[...] = self.apply(sample, seed=seed, epoch=epoch).numpy()
        else:
            out[...] = self.encoded(sample, seed=seed, epoch=epoch)

    def encoded(self, sample: Sample, *, seed: int, epoch: int) -> np.ndarray:
        """Encoded bytes (or a file) -> (C, size, size) uint8, possibly a strided view."""
        data = sample.payload
        if isinstance(data, Path):
            try:
                data = data.read_bytes()
            except OSError as error:
                raise DecodeError(f"cannot read: {error}") from error
        if not self.train:
            return encoded_center(data, size=self.size, crop_fraction=self.val_crop_fraction,
                                  channels=self.channels)
        rng = sample_rng(seed=seed, epoch=epoch, sample_id=sample.sample_id)
        if self.augment == "crop_flip":
            return encoded_crop_flip(data, rng=rng, size=self.size,
                                     min_scale=self.min_crop_scale, channels=self.channels)
        # A grayscale decode is PIL's read-only buffer seen as (1, H, W): copy it to own it.
        image = torch.from_numpy(np.require(encoded_center(
            data, size=self.size, crop_fraction=1.0, channels=self.channels),
            requirements=("C", "W")))
        if self.augment == "shift":
            image = shift(image, rng=rng, max_px=self.max_shift_px)
        return image.numpy()

    def _decoded(self, image: torch.Tensor, sample: Sample, *, seed: int,
                 epoch: int) -> torch.Tensor:
        if not self.train:
            return center(image, size=self.size, crop_fraction=self.val_crop_fraction)
        rng = sample_rng(seed=seed, epoch=epoch, sample_id=sample.sample_id)
        if self.augment == "crop_flip":
            return crop_flip(image, rng=rng, size=self.size, min_scale=self.min_crop_scale)
        image = resize_to(image, size=self.size)
        return shift(image, rng=rng, max_px=self.max_shift_px) if self.augment == "shift" else image


@ray.remote(num_cpus=0)
class PipelineState:
    """The current epoch, for the preprocessing tasks, and the samples they skipped."""

    def __init__(self):
        self._epoch, self._first_step = 0, 0
        self._skipped: set[tuple[str, int]] = set()  # (split, sample id)

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        self._epoch, self._first_step = epoch, first_step

    def epoch(self) -> int:
        return self._epoch

    def position(self) -> tuple[int, int]:
        """(epoch, first step): the next execution of the train split starts there."""
        return self._epoch, self._first_step

    def record_skipped(self, split: str, entries: list[tuple[int, str, str]]) -> None:
        for sample_id, origin, reason in entries:
            # Counted once: a sample fails again in every epoch that reads it.
            if (split, sample_id) not in self._skipped:
                print(f"[raylars] data: skipped undecodable {split} sample {sample_id} "
                      f"({origin}): {reason}", flush=True)
                self._skipped.add((split, sample_id))

    def num_skipped(self) -> int:
        return len(self._skipped)


def announce_epoch(state, *, epoch: int, first_step: int = 0) -> None:
    """Worker side: the next execution of the train split preprocesses `epoch` from its
    optimizer step `first_step` on (a resume mid-epoch skips the steps already trained)."""
    if state is not None:
        ray.get(state.set_epoch.remote(epoch, first_step))


class _Chunk:
    """One output batch, filled in place: each image is written once, into its row."""

    def __init__(self, spec: TransformSpec, rows: int):
        self.images = np.empty((rows, spec.channels, spec.size, spec.size), np.uint8)
        self.labels = np.empty(rows, np.int64)
        self.ids = np.empty(rows, np.int64)
        self.steps = np.empty(rows, np.int64)
        self.count = 0

    def full(self) -> bool:
        return self.count == len(self.ids)

    def rows(self, *, with_step: bool) -> dict:
        # A fresh _Chunk follows each yield: Ray Data may keep these arrays as the block.
        n = self.count
        rows = {"image": self.images[:n], "label": self.labels[:n], "id": self.ids[:n]}
        if with_step:
            rows["step"] = self.steps[:n]
        return rows


def block_positions(block_ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The positions of the blocks a preprocessing call got (one, with batch_size=None)."""
    parts = [np.arange(bounds[b], bounds[b + 1]) for b in np.asarray(block_ids, np.int64)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _load_positions(source, positions: np.ndarray, *, order: np.ndarray) -> Iterator[Sample]:
    """The samples at sequence `positions` (ascending) of an epoch's unit `order`. A unit
    of several rows (a Parquet row group) is read once per call and only its wanted rows
    kept."""
    unit_rows = getattr(source, "unit_rows", None)
    units, rows = locate(positions, order=order, unit_rows=unit_rows)
    if unit_rows is None:
        yield from source.load(units)
        return
    # Consecutive positions share a unit: read each run of one unit once.
    cuts = np.flatnonzero(np.diff(units)) + 1
    for run_units, run_rows in zip(np.split(units, cuts), np.split(rows, cuts), strict=True):
        samples = list(source.load(run_units[:1]))
        yield from (samples[row] for row in run_rows)


def preprocess(batch: dict, *, recipe: SplitRecipe, bounds: np.ndarray,
               slices: StepSlices | None = None,
               positions: np.ndarray | None = None) -> Iterator[dict]:
    """map_batches: block indices -> their positions' samples, preprocessed to uint8
    images, in chunks of recipe.chunk_rows.

    Val (no `slices`): block b is the unit positions [bounds[b], bounds[b+1]). Train (a
    rank's `slices`): block b is `positions[bounds[b]:bounds[b+1]]`, the rank's sequence
    positions of whole steps (ingest/order.py); steps before the announced first step are
    skipped, and each row carries its step."""
    spec, state, split = recipe.spec, recipe.state, recipe.split
    epoch, first_step = (ray.get(state.position.remote()) if spec.train and state is not None
                         else (0, 0))
    order = unit_order(num_units=recipe.source.num_units, seed=recipe.seed, epoch=epoch,
                       shuffle=recipe.shuffle and spec.train)
    wanted = block_positions(batch["id"], bounds)
    if slices is None:  # val: whole units (a Parquet row group holds many samples)
        samples, steps = recipe.source.load(order[wanted]), itertools.repeat(0)
    else:
        wanted = positions[wanted]
        steps = slices.step_of(wanted)
        wanted, steps = wanted[steps >= first_step], steps[steps >= first_step]
        samples = _load_positions(recipe.source, wanted, order=order)
    chunk, skipped = _Chunk(spec, recipe.chunk_rows), []
    for sample, step in zip(samples, steps):  # noqa: B905 - steps may be endless (val)
        try:
            spec.write(sample, chunk.images[chunk.count], seed=recipe.seed, epoch=epoch)
        except DecodeError as error:
            if spec.on_error == "raise":
                raise ValueError(f"data: cannot decode {sample.origin} ({split} sample "
                                 f"{sample.sample_id}): {error} (data.on_error=raise)") from error
            skipped.append((sample.sample_id, sample.origin, str(error)))
            continue
        chunk.labels[chunk.count], chunk.ids[chunk.count] = sample.label, sample.sample_id
        chunk.steps[chunk.count] = step
        chunk.count += 1
        if chunk.full():
            yield chunk.rows(with_step=slices is not None)
            chunk = _Chunk(spec, recipe.chunk_rows)
    if skipped and state is not None:
        # Blocking, so the count is complete by the time the rows are consumed.
        ray.get(state.record_skipped.remote(split, skipped))
    if chunk.count:
        yield chunk.rows(with_step=slices is not None)


@dataclass(frozen=True)
class SplitRecipe:
    """What one split's Dataset is made of, so that it can be built for any CPU count and
    any slice of its units (ingest/sharding.py rebuilds it when a worker group starts)."""

    source: object  # ArraySource, FolderSource or ParquetSource: num_units, load(units)
    spec: TransformSpec
    state: object  # the PipelineState actor
    split: str
    seed: int
    shuffle: bool
    num_rows: int
    sizing: BlockSizing
    chunk_rows: int  # rows per preprocessing call's output batch
    preprocess_cpus: int | None  # most tasks at once (data.preprocess_cpus)

    def __deepcopy__(self, memo) -> SplitRecipe:
        # Train deep-copies its DataConfig, which holds recipes: they are immutable, and
        # the object refs and the actor handle inside must stay the same objects.
        return self


def split_bounds(recipe: SplitRecipe, *, cpus: int,
                 units: tuple[int, int] | None = None) -> np.ndarray:
    """Unit boundaries of the blocks of the split (or of its units [first, stop))."""
    first, stop = units if units is not None else (0, recipe.source.num_units)
    count = stop - first
    rows = round(recipe.num_rows * count / max(1, recipe.source.num_units))
    return first + recipe.sizing.bounds(num_rows=rows, num_units=count, cpus=cpus)


def build_split(recipe: SplitRecipe, *, cpus: int, units: tuple[int, int] | None = None):
    """The Dataset of a split (or of its units [first, stop)): one row per block, each
    mapped by a preprocessing task to its positions' samples. `cpus`: those the pipeline
    may use, which size the blocks (ingest/sizing.py)."""
    return _blocks_dataset(recipe, bounds=split_bounds(recipe, cpus=cpus, units=units),
                           fn_kwargs={})


def build_train_shard(recipe: SplitRecipe, *, cpus: int, slices: StepSlices, num_steps: int):
    """Rank `slices.rank`'s train Dataset: its share of steps [0, num_steps) of every epoch
    (ingest/order.py), in step order, in blocks of whole steps sized for `cpus`. Every
    execution reads the epoch and first step the workers announced (`announce_epoch`)."""
    step_bounds = recipe.sizing.bounds(num_rows=num_steps * slices.size,
                                       num_units=max(1, num_steps), cpus=cpus)
    if num_steps == 0:
        step_bounds = np.zeros_like(step_bounds)
    positions = slices.positions(first_step=0, stop_step=num_steps)
    return _blocks_dataset(recipe, bounds=step_bounds * slices.size,
                           fn_kwargs={"slices": slices, "positions": positions})


def _blocks_dataset(recipe: SplitRecipe, *, bounds: np.ndarray, fn_kwargs: dict):
    import ray.data

    blocks = len(bounds) - 1
    # One row per read block lets Ray Data fuse the range with the map: a task per block.
    indices = ray.data.range(blocks, override_num_blocks=blocks,
                             concurrency=recipe.preprocess_cpus)
    dataset = indices.map_batches(
        preprocess, batch_size=None, num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=recipe.preprocess_cpus),
        fn_kwargs={"recipe": recipe, "bounds": bounds, **fn_kwargs})
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
