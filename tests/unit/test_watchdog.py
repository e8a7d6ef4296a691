"""The input-pipeline watchdog (job/watchdog.py) and the group bounds that leave the
pipeline its CPUs (job/headroom.py)."""

import threading
import time

import pytest

from job.headroom import group_size, pipeline_cpus
from job.watchdog import PipelineStalled, watched


def slow_feed(*, first: int, then_sleep_s: float, stopped: threading.Event | None = None):
    """`first` batches at once, then a wait of `then_sleep_s` (a starved pipeline)."""
    try:
        yield from range(first)
        time.sleep(then_sleep_s)
        yield first
    finally:
        if stopped is not None:
            stopped.set()


def test_a_feed_that_stalls_fails_after_the_timeout_with_the_cause():
    started = time.monotonic()
    got = []
    with pytest.raises(PipelineStalled) as raised:
        for batch in watched(slow_feed(first=3, then_sleep_s=30), timeout_s=0.3,
                             what="train epoch 1"):
            got.append(batch)
    waited = time.monotonic() - started
    assert got == [0, 1, 2]  # everything the feed produced came through first
    assert 0.3 <= waited < 5, waited
    message = str(raised.value)
    assert "no batch from the input pipeline for 0.3 s (train epoch 1" in message
    assert "data.stall_timeout_s" in message and "data.preprocess_on=workers" in message
    # Not connected to Ray here: the report says so instead of failing.
    assert "Not connected to Ray" in message


def test_only_the_wait_counts_not_the_time_the_trainer_spends_on_a_batch():
    got = []
    for batch in watched(iter(range(4)), timeout_s=0.3, what="val"):
        time.sleep(0.5)  # a step longer than the timeout
        got.append(batch)
    assert got == [0, 1, 2, 3]


def test_the_feeds_own_error_reaches_the_trainer():
    def broken():
        yield 0
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(watched(broken(), timeout_s=5, what="val"))


def test_a_trainer_that_stops_early_closes_the_feed():
    stopped = threading.Event()
    batches = watched(slow_feed(first=100, then_sleep_s=0, stopped=stopped), timeout_s=5,
                      what="train epoch 1")
    assert [next(batches) for _ in range(2)] == [0, 1]
    batches.close()  # as a `for` loop that breaks (a step cap) does when it drops it
    assert stopped.wait(timeout=5), "the feed's iterator was not closed"


@pytest.mark.parametrize(("cluster_cpus", "expected"), [
    (4, (2, 3)),  # the case: two 2-CPU nodes, 2..4 workers -> 2..3
    (5, (2, 4)),  # room for all four and one task
    (3, (2, 2)),  # only min_workers leave room: a fixed group of 2
    (100, (2, 4)),
])
def test_elastic_bounds_leave_the_pipeline_one_cpu(cluster_cpus, expected):
    group = group_size(min_workers=2, max_workers=4, cpus_per_worker=1,
                       cluster_cpus=cluster_cpus, needs_cpus=pipeline_cpus(None))
    assert (group.min_workers, group.max_workers) == expected
    assert bool(group.note) == (expected != (2, 4))
    assert group.scaling == (expected if expected[0] != expected[1] else expected[0])


def test_bounds_follow_cpus_per_worker_and_preprocess_cpus():
    # 8 CPUs, 2 per worker, 3 for the pipeline: 2 workers fit (4 + 3 <= 8), not 3.
    group = group_size(min_workers=1, max_workers=4, cpus_per_worker=2, cluster_cpus=8,
                       needs_cpus=pipeline_cpus(3))
    assert group.scaling == (1, 2) and "leave 3" in group.note
    # Fractional CPUs: 0.5 x 6 = 3 leaves exactly 1 of 4.
    assert group_size(min_workers=2, max_workers=6, cpus_per_worker=0.5, cluster_cpus=4,
                      needs_cpus=1).scaling == (2, 6)


def test_workers_that_feed_themselves_keep_the_configured_bounds():
    group = group_size(min_workers=2, max_workers=4, cpus_per_worker=1, cluster_cpus=4,
                       needs_cpus=0)
    assert group.scaling == (2, 4) and not group.note


def test_a_group_that_cannot_leave_room_is_kept_with_a_warning():
    group = group_size(min_workers=4, max_workers=4, cpus_per_worker=1, cluster_cpus=4,
                       needs_cpus=1)
    assert group.scaling == 4
    assert group.note.startswith("warning:") and "data.stall_timeout_s" in group.note
