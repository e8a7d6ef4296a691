"""ingest/order.py: which samples each optimizer step trains, as a function of a global
position, so that a resume at any world size trains each remaining sample once."""

import numpy as np
import pytest
import torch

from ingest.order import StepSlices, batches_by_step, epoch_steps, locate, unit_order


def test_rank_slices_tile_every_global_batch_for_any_world_size():
    for world in (1, 2, 3, 7):
        ranks = [StepSlices(global_batch_size=10, world_size=world, rank=r) for r in range(world)]
        positions = np.concatenate([s.positions(first_step=2, stop_step=5) for s in ranks])
        assert sorted(positions.tolist()) == list(range(20, 50))
        assert max(s.size for s in ranks) - min(s.size for s in ranks) <= 1
        for s in ranks:
            assert set(s.step_of(s.positions(first_step=3, stop_step=4)).tolist()) == {3}
    with pytest.raises(ValueError, match="cannot be split over 4 workers"):
        StepSlices(global_batch_size=3, world_size=4, rank=0)


def test_locate_lays_multi_row_units_end_to_end_in_the_epoch_order():
    unit_rows = np.array([3, 1, 2])  # 6 rows
    order = np.array([2, 0, 1])      # the epoch's unit order: rows of 2, then 0, then 1
    units, rows = locate(np.arange(6), order=order, unit_rows=unit_rows)
    assert units.tolist() == [2, 2, 0, 0, 0, 1] and rows.tolist() == [0, 1, 0, 1, 2, 0]
    units, rows = locate(np.array([2, 0]), order=order, unit_rows=None)
    assert units.tolist() == [1, 2] and rows.tolist() == [0, 0]


def test_unit_order_is_a_seeded_permutation_per_epoch():
    first = unit_order(num_units=50, seed=1, epoch=0, shuffle=True)
    assert sorted(first.tolist()) == list(range(50))
    assert first.tolist() != unit_order(num_units=50, seed=1, epoch=1, shuffle=True).tolist()
    assert unit_order(num_units=5, seed=1, epoch=3, shuffle=False).tolist() == list(range(5))
    assert epoch_steps(num_rows=1437, global_batch_size=64, max_steps=None) == 22
    assert epoch_steps(num_rows=1437, global_batch_size=64, max_steps=5) == 5


def rows(steps: list[int]) -> dict:
    return {"step": torch.tensor(steps), "id": torch.arange(len(steps))}


def test_batches_by_step_regroups_any_stream_boundaries():
    stream = [rows([2, 2, 3]), rows([3]), rows([4, 4, 4])]
    out = list(batches_by_step(stream, first_step=2, num_steps=5))
    assert [b["step"].tolist() for b in out] == [[2, 2], [3, 3], [4, 4, 4]]
    with pytest.raises(ValueError, match="no sample for optimizer step 3"):
        list(batches_by_step([rows([2]), rows([4])], first_step=2, num_steps=5))
    with pytest.raises(ValueError, match="ended after step 3 of 5"):
        list(batches_by_step([rows([2, 3])], first_step=2, num_steps=5))
