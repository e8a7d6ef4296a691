"""Block sizing (ingest/sizing.py) and the val slices per rank (ingest/sharding.py): pure
functions, no Ray cluster."""

import numpy as np
import pytest

from ingest.sharding import spare_cpus
from ingest.sizing import BlockSizing, block_bounds, ramp_length, rank_slices

DEFAULTS = BlockSizing(min_blocks=2, max_rows=4096, min_rows=64)  # data.* defaults
IMAGENET = 1_281_167


def sizes(bounds: np.ndarray) -> np.ndarray:
    return np.diff(bounds)


def test_small_machine_keeps_few_large_blocks():
    # The measured best on 2 CPUs (BENCHMARKS.md): 7185 images in 2 blocks, as before.
    assert DEFAULTS.count(num_rows=7185, num_units=7185, cpus=2) == 2
    assert sorted(sizes(DEFAULTS.bounds(num_rows=7185, num_units=7185, cpus=2))) == [3592, 3593]
    # The digits on the session cluster's spare CPUs: one block per CPU.
    assert DEFAULTS.count(num_rows=1437, num_units=1437, cpus=4) == 4


@pytest.mark.parametrize("cpus,blocks", [(1, 313), (2, 314), (6, 318), (256, 512),
                                         (4096, 4096)])
def test_imagenet_blocks_grow_with_the_cpus_in_whole_waves(cpus, blocks):
    assert DEFAULTS.count(num_rows=IMAGENET, num_units=IMAGENET, cpus=cpus) == blocks
    bounds = DEFAULTS.bounds(num_rows=IMAGENET, num_units=IMAGENET, cpus=cpus)
    assert len(bounds) == blocks + 1 and sizes(bounds).max() <= 4096


def test_bounds_and_floors():
    # Each block >= a preprocessing batch when the CPUs would ask for more...
    assert DEFAULTS.count(num_rows=1000, num_units=1000, cpus=64) == 15
    # ...but data.num_blocks is a floor, and a block holds one unit at least.
    assert BlockSizing(min_blocks=8, max_rows=4096, min_rows=64).count(
        num_rows=100, num_units=100, cpus=1) == 8
    assert DEFAULTS.count(num_rows=10_000, num_units=3, cpus=16) == 3  # 3 row groups
    assert BlockSizing(min_blocks=1, max_rows=4096, min_rows=64, blocks_per_cpu=3).count(
        num_rows=10_000, num_units=10_000, cpus=4) == 12  # data.blocks_per_cpu waves
    empty = DEFAULTS.bounds(num_rows=0, num_units=0, cpus=4)
    assert empty.tolist() == [0, 0]  # one empty block: an empty val slice still reads


@pytest.mark.parametrize("units,blocks,ramp", [(10, 10, 0), (1000, 7, 0), (600, 512, 256),
                                               (IMAGENET, 512, 256), (50, 20, 10)])
def test_block_bounds_cover_every_unit_once_with_nonempty_blocks(units, blocks, ramp):
    bounds = block_bounds(num_units=units, num_blocks=blocks, ramp=ramp)
    assert bounds[0] == 0 and bounds[-1] == units and len(bounds) == blocks + 1
    assert (sizes(bounds) >= 1).all()


def test_the_first_wave_ramps_up_when_a_second_follows():
    assert ramp_length(num_blocks=512, cpus=256) == 256
    assert ramp_length(num_blocks=300, cpus=256) == 0  # one wave and a bit: no ramp
    assert ramp_length(num_blocks=8, cpus=1) == 0
    bounds = DEFAULTS.bounds(num_rows=IMAGENET, num_units=IMAGENET, cpus=256)
    first, rest = sizes(bounds)[:256], sizes(bounds)[256:]
    assert (np.diff(first) >= 0).all() and first[0] < rest.min() / 100
    # Full blocks stay within data.rows_per_block though the ramp carries fewer rows.
    assert rest.max() <= 4096 and abs(first[-1] - rest.mean()) <= 1


@pytest.mark.parametrize("units,world", [(362, 3), (360, 3), (2, 3), (50_000, 1024), (7, 1)])
def test_rank_slices_are_contiguous_disjoint_and_balanced(units, world):
    slices = rank_slices(units, world)
    assert len(slices) == world and slices[0][0] == 0 and slices[-1][1] == units
    assert all(a[1] == b[0] for a, b in zip(slices[:-1], slices[1:], strict=True))
    lengths = [stop - start for start, stop in slices]
    assert max(lengths) - min(lengths) <= 1


def test_spare_cpus_are_what_the_workers_leave_or_the_configured_count():
    assert spare_cpus(cluster_cpus=6, world_size=2, cpus_per_worker=1,
                      preprocess_cpus=None) == 4
    assert spare_cpus(cluster_cpus=96, world_size=8, cpus_per_worker=8,
                      preprocess_cpus=None) == 32
    assert spare_cpus(cluster_cpus=4, world_size=4, cpus_per_worker=1,
                      preprocess_cpus=None) == 1
    assert spare_cpus(cluster_cpus=6, world_size=2, cpus_per_worker=1, preprocess_cpus=3) == 3
