"""How an epoch of a split is cut into preprocessing tasks: how many blocks (one Ray Data
task each) and which units (samples, or Parquet row groups) each covers. Pure functions of
the sizes and the CPU count, no Ray: ingest/pipeline.py builds the Datasets from them and
ingest/sharding.py picks the CPU count when a worker group starts.

The count. Blocks grow with the CPUs the pipeline may use, in whole waves (a multiple of
the CPUs, so no CPU idles through a last partial wave: 313 blocks on 256 CPUs take two
task times, as 512 do), `blocks_per_cpu` waves at least. Bounds: none larger than
`max_rows` (data.rows_per_block), none smaller than `min_rows` (a preprocessing batch,
data.preprocess_batch_size), at least `min_blocks` (data.num_blocks), at most one per unit.
A small set on a small machine keeps few large blocks: on 2 CPUs each extra task cost
0.1-0.3 s beyond its images (BENCHMARKS.md, input pipeline), and 2 CPUs give 2 blocks, as
before.

The ramp. Ray Train reads with preserve_order, so the stream hands out task i's rows only
after all of task i-1's: an epoch would start at the pace of one task (every worker but
the first few waits until the first wave is done, ~13 s for 4096 ImageNet rows on one
core). When there are at least two waves, the first wave's blocks grow linearly (k+1)/C
of a full block, so they finish one after another, in order, from 1/C of a task time on;
the CPUs they free take the full blocks that follow. Extra blocks make up the rows the
ramp carries less, so a full block still holds at most `max_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockSizing:
    min_blocks: int  # data.num_blocks
    max_rows: int  # data.rows_per_block
    min_rows: int  # data.preprocess_batch_size
    blocks_per_cpu: int = 1  # data.blocks_per_cpu: waves at least

    def count(self, *, num_rows: int, num_units: int, cpus: int) -> int:
        return num_blocks(num_rows=num_rows, num_units=num_units, cpus=cpus, sizing=self)

    def bounds(self, *, num_rows: int, num_units: int, cpus: int) -> np.ndarray:
        """Unit boundaries of the blocks: block b covers units [bounds[b], bounds[b+1])."""
        blocks = self.count(num_rows=num_rows, num_units=num_units, cpus=cpus)
        return block_bounds(num_units=num_units, num_blocks=blocks,
                            ramp=ramp_length(num_blocks=blocks, cpus=cpus))


def ramp_length(*, num_blocks: int, cpus: int) -> int:
    """Blocks of the ramp: the first wave, when a second one follows; else none (with
    one wave, smaller first blocks would only make the last ones longer)."""
    cpus = max(1, int(cpus))
    return cpus if cpus > 1 and num_blocks >= 2 * cpus else 0


def num_blocks(*, num_rows: int, num_units: int, cpus: int, sizing: BlockSizing) -> int:
    if num_units <= 0:
        return 1  # one empty task: an empty slice still yields a (finished) Dataset
    cpus = max(1, int(cpus))
    capped = math.ceil(num_rows / sizing.max_rows)  # blocks the row cap alone asks for
    waves = max(sizing.blocks_per_cpu, math.ceil(capped / cpus))
    blocks = min(cpus * waves, max(1, num_rows // sizing.min_rows))
    blocks = max(blocks, sizing.min_blocks, capped)
    # The ramp's blocks carry (ramp + 1) / 2 full blocks' rows, not `ramp`.
    if ramp_length(num_blocks=blocks, cpus=cpus):
        blocks = max(blocks, capped + math.ceil((cpus - 1) / 2))
    return max(1, min(blocks, num_units))


def block_bounds(*, num_units: int, num_blocks: int, ramp: int = 0) -> np.ndarray:
    """`num_blocks` + 1 increasing unit offsets from 0 to num_units: blocks of one unit at
    least (when there are units for all), the first `ramp` weighted (k + 1) / ramp."""
    if num_units <= 0:
        return np.zeros(num_blocks + 1, np.int64)
    weights = np.ones(num_blocks)
    weights[:ramp] = np.arange(1, ramp + 1) / ramp
    # One unit each, the rest shared by weight: rounding a non-decreasing cumulative sum
    # keeps every block's share >= 0, so no block is empty and the total is exact.
    spare = num_units - num_blocks
    shares = np.diff(np.round(np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()
                              * spare).astype(np.int64))
    return np.concatenate([[0], np.cumsum(1 + shares)]).astype(np.int64)


def rank_slices(num_units: int, world_size: int) -> list[tuple[int, int]]:
    """Rank r's units [r * n // w, (r + 1) * n // w): contiguous, disjoint, covering all."""
    bounds = [rank * num_units // world_size for rank in range(world_size + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
