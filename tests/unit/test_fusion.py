"""The fusion plan (buckets, segments) and the flat buffers, without processes."""

import pytest
import torch

from comms.fusion import (
    MB,
    FlatBuffers,
    balanced_segments,
    plan_buckets,
    plan_for_params,
    segments_from_splits,
)


def buckets_of(numels, threshold_bytes, dtypes=None):
    dtypes = dtypes or ["float32"] * len(numels)
    return plan_buckets(numels=numels, element_sizes=[4] * len(numels), dtypes=dtypes,
                        threshold_bytes=threshold_bytes)


def test_buckets_pack_in_reverse_order_up_to_the_threshold():
    buckets = buckets_of([10, 20, 30, 40, 50], threshold_bytes=4 * 90)
    assert [b.tensors for b in buckets] == [(4, 3), (2, 1, 0)]
    assert [b.nbytes for b in buckets] == [360, 240]
    assert buckets[0].offsets() == (0, 50)


def test_a_tensor_above_the_threshold_travels_alone():
    buckets = buckets_of([5, 1000, 5, 5], threshold_bytes=4 * 20)
    assert [b.tensors for b in buckets] == [(3, 2), (1,), (0,)]


def test_dtype_change_starts_a_new_bucket():
    buckets = buckets_of([4, 4, 4], threshold_bytes=10**6, dtypes=["float32", "float16", "float16"])
    assert [b.tensors for b in buckets] == [(2, 1), (0,)]


def test_every_tensor_is_in_exactly_one_bucket():
    numels = [(i * 7919) % 5000 + 1 for i in range(200)]
    buckets = buckets_of(numels, threshold_bytes=4 * 20000)
    placed = sorted(t for b in buckets for t in b.tensors)
    assert placed == list(range(200))
    assert all(b.nbytes <= 4 * 20000 or len(b.tensors) == 1 for b in buckets)


def test_bad_threshold_names_the_key():
    from comms.config import FusedConfig

    with pytest.raises(ValueError, match="comms.fusion_threshold_mb"):
        FusedConfig(fusion_threshold_mb=0)


def test_balanced_segments_split_bytes_evenly_and_keep_order():
    assert balanced_segments(bucket_bytes=[10, 10, 10, 10], num_segments=2) == ((0, 1), (2, 3))
    assert balanced_segments(bucket_bytes=[30, 5, 5, 20], num_segments=2) == ((0,), (1, 2, 3))
    assert balanced_segments(bucket_bytes=[1, 1, 100], num_segments=3) == ((0,), (1,), (2,))
    # More segments than buckets: one per bucket.
    assert balanced_segments(bucket_bytes=[4, 4], num_segments=5) == ((0,), (1,))
    assert balanced_segments(bucket_bytes=[4, 4, 4], num_segments=1) == ((0, 1, 2),)
    from comms.config import FusedConfig

    with pytest.raises(ValueError, match="comms.segments"):
        FusedConfig(segments=0)


def test_segments_from_split_points():
    assert segments_from_splits(num_buckets=5, splits=[2, 3]) == ((0, 1), (2,), (3, 4))


def test_grads_are_views_into_persistent_flat_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    params = list(model.parameters())
    plan = plan_for_params(params, threshold_mb=4 * 70 / MB, num_segments=2)
    assert plan.nbytes == 4 * sum(p.numel() for p in params)
    buffers = FlatBuffers(plan, params=params, pad_multiple=3)
    buffers.install_grad_views()
    model(torch.randn(5, 8)).sum().backward()
    for index, p in enumerate(params):
        flat = buffers.flat[buffers.bucket_of[index]]
        assert flat.numel() % 3 == 0
        start = flat.data_ptr()
        assert start <= p.grad.data_ptr() < start + flat.numel() * flat.element_size()
    expected = [p.grad.clone() for p in params]
    # A set_to_none zero_grad replaces the views; adopt() puts them back, keeping the value.
    for p in params:
        p.grad = p.grad.clone()
    for index in range(len(params)):
        buffers.adopt(index)
    for index, p in enumerate(params):
        assert p.grad.data_ptr() == buffers.views[index].data_ptr()
        torch.testing.assert_close(p.grad, expected[index], rtol=0, atol=0)
    assert plan.describe()["num_buckets"] == len(plan.buckets)


def test_pipeline_chunks_are_views_that_cover_the_buffer():
    from comms.allreduce import split_chunks

    flat = torch.arange(1000, dtype=torch.float32)
    chunks = split_chunks(flat, max_bytes=4 * 300, multiple=4)
    assert [c.numel() for c in chunks] == [300, 300, 300, 100]
    assert all(c.data_ptr() == flat[300 * i:].data_ptr() for i, c in enumerate(chunks))
    assert torch.equal(torch.cat(chunks), flat)
    # Rounded down to the multiple (2d shards), never below it; a buffer that fits is whole.
    assert [c.numel() for c in split_chunks(flat, max_bytes=4 * 30, multiple=8)][:2] == [24, 24]
    assert [c.numel() for c in split_chunks(flat[:16], max_bytes=1, multiple=8)] == [8, 8]
    assert split_chunks(flat, max_bytes=4e6)[0] is flat


def test_bad_pipeline_chunk_names_the_key():
    from comms.config import HierarchicalConfig

    with pytest.raises(ValueError, match="comms.pipeline_chunk_mb"):
        HierarchicalConfig(pipeline_chunk_mb=0)
