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


class _FakeWork:
    """A collective's work that logs when it is waited for."""

    def __init__(self, log, stage, chunk):
        self.log, self.stage, self.chunk = log, stage, chunk

    def wait(self):
        self.log.append(("wait", self.stage, self.chunk))


def _fake_stages(log, count):
    def stage(index):
        def issue(tensor):
            log.append(("issue", index, int(tensor[0])))
            return _FakeWork(log, index, int(tensor[0]))
        return issue
    return [stage(k) for k in range(count)]


def test_ordered_pipeline_issues_chunk_after_chunk_from_the_caller():
    from comms.pipeline import StagePipeline

    log = []
    pipeline = StagePipeline(_fake_stages(log, 3), device=torch.device("cpu"), ordered=True)
    handle = pipeline.submit([torch.tensor([0.0]), torch.tensor([1.0])])
    # Everything is issued before submit returns, in one fixed order; each stage first
    # waits for the chunk's previous stage (on nccl: a stream wait, not the host).
    assert log == [("issue", 0, 0), ("wait", 0, 0), ("issue", 1, 0), ("wait", 1, 0),
                   ("issue", 2, 0),
                   ("issue", 0, 1), ("wait", 0, 1), ("issue", 1, 1), ("wait", 1, 1),
                   ("issue", 2, 1)]
    assert pipeline._threads == []
    log.clear()
    handle.wait()  # the caller's stream waits for each chunk's last stage
    assert log == [("wait", 2, 0), ("wait", 2, 1)]
    pipeline.close()


def test_threaded_pipeline_keeps_chunk_order_per_stage():
    from comms.pipeline import StagePipeline

    log = []
    pipeline = StagePipeline(_fake_stages(log, 3), device=torch.device("cpu"), ordered=False)
    handle = pipeline.submit([torch.tensor([float(i)]) for i in range(4)])
    handle.wait()
    pipeline.close()
    for stage in range(3):
        issued = [chunk for kind, k, chunk in log if kind == "issue" and k == stage]
        assert issued == [0, 1, 2, 3]
    for kind, stage, chunk in log:
        if kind == "issue" and stage > 0:
            assert log.index(("wait", stage - 1, chunk)) < log.index((kind, stage, chunk))


def test_bucket_clock_on_cpu_measures_from_the_first_hook():
    import time

    from comms.readiness import BucketClock

    clock = BucketClock(3, device=torch.device("cpu"))
    assert not clock.started
    clock.hook()
    clock.bucket_ready(1)
    time.sleep(0.01)
    clock.hook()
    clock.bucket_ready(0)
    time.sleep(0.01)
    clock.hook()  # bucket 2 never completes (unused parameters): ready at the last hook
    ready = clock.ready_s()
    assert ready[1] == 0.0 and 0.005 < ready[0] < ready[2]


def test_channels_last_weights_get_gradient_views_in_their_own_layout():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    reference = torch.nn.Conv2d(3, 4, 3)
    reference.load_state_dict(conv.state_dict())
    params = list(conv.parameters())
    plan = plan_for_params(params, threshold_mb=1.0, num_segments=1)
    buffers = FlatBuffers(plan, params=params)
    buffers.install_grad_views()
    view = buffers.views[0]
    assert view.stride() == conv.weight.stride() != conv.weight.contiguous().stride()
    bucket = plan.buckets[buffers.bucket_of[0]]
    flat = buffers.flat[buffers.bucket_of[0]]
    offset = bucket.offsets()[bucket.tensors.index(0)]
    assert view.data_ptr() == flat.data_ptr() + 4 * offset  # at its place in the bucket
    images = torch.randn(2, 3, 6, 6)
    conv(images.to(memory_format=torch.channels_last)).sum().backward()
    reference(images).sum().backward()
    assert conv.weight.grad.data_ptr() == view.data_ptr()  # accumulated in place
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad)
    # The bucket holds exactly the two gradients' elements, nothing else.
    torch.testing.assert_close(flat.sum(), reference.weight.grad.sum() + reference.bias.grad.sum())
