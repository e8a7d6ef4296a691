"""The alpha-beta-gamma model, calibration and plan selection: arithmetic, no processes."""

import math

import pytest

from comms.cost_model import (
    ALGORITHMS,
    ClusterShape,
    Link,
    allreduce_s,
    bucket_ready_s,
    calibrate_ring,
    choose_plan,
    choose_split,
    fit_latency_bandwidth,
    fit_line,
    ring_s,
    simulate,
    stage_s,
    tree_s,
)
from comms.fusion import plan_buckets

LINK = Link(alpha_s=1e-5, beta_s_per_byte=1e-9, gamma_s_per_byte=2e-10)


def test_ring_matches_the_brief_formula():
    p, m = 8, 1e6
    want = 2 * (p - 1) * 1e-5 + (2 * (p - 1) * 1e-9 + (p - 1) * 2e-10) * m / p
    assert ring_s(nbytes=m, num_ranks=p, link=LINK) == pytest.approx(want)
    assert ring_s(nbytes=m, num_ranks=1, link=LINK) == 0.0


def test_tree_has_log_latency():
    assert tree_s(nbytes=0, num_ranks=1024, link=LINK) == pytest.approx(2 * 10 * 1e-5)
    assert ring_s(nbytes=0, num_ranks=1024, link=LINK) == pytest.approx(2 * 1023 * 1e-5)


def test_hierarchy_cuts_the_latency_term_for_small_messages():
    cluster = ClusterShape(num_nodes=128, ranks_per_node=8,
                           intra=Link.from_bandwidth(latency_us=2, gbit_per_s=1200),
                           inter=Link.from_bandwidth(latency_us=10, gbit_per_s=100))
    small = {a: allreduce_s(a, nbytes=64 * 1024, cluster=cluster)
             for a in ("ring", "reduce_bcast", "2d")}
    assert small["reduce_bcast"] < small["ring"] / 4
    # Large messages: the node's NIC bounds every algorithm (2d shares it among 8 rings),
    # so 2d is never below the NIC's 2 (N-1)/N M / B.
    large = allreduce_s("2d", nbytes=100e6, cluster=cluster)
    nic_floor = 2 * 127 / 128 * 100e6 * 8 / 100e9
    assert nic_floor < large < allreduce_s("ring", nbytes=100e6, cluster=cluster)
    assert large < 1.3 * nic_floor
    with pytest.raises(ValueError, match="unknown allreduce algorithm"):
        allreduce_s("butterfly", nbytes=1, cluster=cluster)


def test_each_algorithm_has_one_name():
    # The names comms.allreduce and comms.variant use; the old aliases are gone.
    assert ALGORITHMS == ("ring", "tree", "reduce_bcast", "2d")
    cluster = ClusterShape(num_nodes=2, ranks_per_node=2, intra=LINK, inter=LINK)
    for old in ("flat", "hierarchical", "hierarchical_2d"):
        with pytest.raises(ValueError, match="unknown allreduce algorithm"):
            allreduce_s(old, nbytes=1, cluster=cluster)
    assert len(stage_s("2d", nbytes=1.0, cluster=cluster)) == 3


def test_one_node_reduce_bcast_is_the_intra_tree():
    cluster = ClusterShape(num_nodes=1, ranks_per_node=4, intra=LINK, inter=LINK)
    m = 1e6
    want = 2 * (1e-5 + 1.2e-9 * m) + 2 * (1e-5 + 1e-9 * m)
    assert allreduce_s("reduce_bcast", nbytes=m, cluster=cluster) == pytest.approx(want)


def test_calibration_recovers_alpha_and_beta():
    p = 4
    sizes = [2**k for k in range(10, 27, 2)]
    times = [ring_s(nbytes=m, num_ranks=p, link=Link(alpha_s=3e-5, beta_s_per_byte=2e-9))
             for m in sizes]
    link = calibrate_ring(sizes_bytes=sizes, times_s=times, num_ranks=p)
    assert link.alpha_s == pytest.approx(3e-5, rel=1e-6)
    assert link.beta_s_per_byte == pytest.approx(2e-9, rel=1e-6)
    assert fit_line(sizes_bytes=[1, 2, 3], times_s=[5.0, 4.0, 3.0])[1] == 0.0  # never negative


def test_calibration_follows_the_large_messages_past_a_burst_knee():
    # A token-bucket link: the first 512 KB pass at once, the rest at 1 Gbit/s (the
    # emulated hosts' tbf). The fused buckets are MBs, so their slope must be the link's.
    sizes = [1024 * 4**k for k in range(9)]  # 1 KB .. 64 MB
    beta, c0 = 8e-9, 4e-3
    times = [c0 + beta * max(0, m - 512 * 1024) for m in sizes]
    fitted_c0, fitted_c1 = fit_latency_bandwidth(sizes_bytes=sizes, times_s=times)
    assert fitted_c0 == pytest.approx(c0, rel=0.05)
    assert fitted_c1 == pytest.approx(beta, rel=0.02)
    big = 100e6
    want = c0 + beta * (big - 512 * 1024)
    assert fitted_c0 + fitted_c1 * big == pytest.approx(want, rel=0.02)
    # One line in relative error over every size bends to the knee.
    line_c0, line_c1 = fit_line(sizes_bytes=sizes, times_s=times)
    assert line_c0 + line_c1 * big < 0.9 * want


def test_bucket_ready_follows_reverse_registration_order():
    buckets = plan_buckets(numels=[10, 10, 10, 10], element_sizes=[1] * 4, dtypes=["x"] * 4,
                           threshold_bytes=20)
    assert [b.tensors for b in buckets] == [(3, 2), (1, 0)]
    assert bucket_ready_s(tensor_backward_s=[1.0, 2.0, 3.0, 4.0], buckets=buckets) == [7.0, 10.0]


def test_choose_split_overlaps_the_early_buckets():
    ready = [1.0, 2.0, 3.0, 4.0]
    sizes = [1, 1, 1, 1]

    def comm(nbytes):
        return 0.9 * nbytes

    one = simulate(ready_s=ready, splits=[], bucket_bytes=sizes, comm_s=comm)
    assert one == pytest.approx(4.0 + 3.6)
    splits, end = choose_split(ready_s=ready, bucket_bytes=sizes, comm_s=comm, num_segments=2)
    assert end == pytest.approx(simulate(ready_s=ready, splits=splits, bucket_bytes=sizes,
                                         comm_s=comm))
    # Brute force over every single split point agrees with the dynamic programme.
    brute = min(simulate(ready_s=ready, splits=[s], bucket_bytes=sizes, comm_s=comm)
                for s in range(1, 4))
    assert end == pytest.approx(min(brute, one)) and end < one
    _, end4 = choose_split(ready_s=ready, bucket_bytes=sizes, comm_s=comm, num_segments=4)
    assert end4 == pytest.approx(4.9)  # each bucket right after it is ready


def test_choose_plan_ranks_plans_and_reports_efficiency():
    cluster = ClusterShape(num_nodes=16, ranks_per_node=8,
                           intra=Link.from_bandwidth(latency_us=2, gbit_per_s=1200),
                           inter=Link.from_bandwidth(latency_us=10, gbit_per_s=100))
    tensor_bytes = [4 * 1000] * 100 + [4 * 2_000_000]
    choices = choose_plan(tensor_bytes=tensor_bytes, tensor_backward_s=[1e-4] * 101,
                          forward_s=0.005, cluster=cluster, thresholds_mb=[0.01, 1, 32],
                          max_segments=2)
    assert choices == sorted(choices, key=lambda c: c.step_s)
    best = choices[0]
    assert 0 < best.efficiency <= 1 and best.step_s >= best.forward_s + best.backward_s
    assert math.isclose(best.efficiency, (0.005 + 0.0101) / best.step_s)
    assert best.describe()["algorithm"] in ("ring", "tree", "reduce_bcast", "2d")


def test_chunked_reduce_bcast_is_a_pipeline_of_its_stages():
    cluster = ClusterShape(num_nodes=2, ranks_per_node=2,
                           intra=Link(alpha_s=1e-4, beta_s_per_byte=1e-10),
                           inter=Link(alpha_s=1e-4, beta_s_per_byte=8e-9))
    m = 100e6
    whole = allreduce_s("reduce_bcast", nbytes=m, cluster=cluster)
    chunked = allreduce_s("reduce_bcast", nbytes=m, cluster=cluster, chunk_bytes=m / 50)
    # By hand: fill with the first chunk's intra stages, then 50 chunks through the
    # slowest stage (the leaders' ring), with plain float arithmetic.
    c = m / 50
    intra_stage = 1e-4 + 1e-10 * c
    across = 2 * 1e-4 + 2 * 8e-9 * c / 2
    assert chunked == pytest.approx(intra_stage + 50 * across + intra_stage, rel=1e-9)
    assert chunked < whole
    # A buffer within one chunk is the unpipelined sum.
    assert allreduce_s("reduce_bcast", nbytes=m, cluster=cluster, chunk_bytes=2 * m) == whole


def _best_reduce_bcast_chunk(*, num_nodes: int, inter_latency_us: float):
    cluster = ClusterShape(num_nodes=num_nodes, ranks_per_node=2,
                           intra=Link.from_bandwidth(latency_us=100, gbit_per_s=40),
                           inter=Link.from_bandwidth(latency_us=inter_latency_us, gbit_per_s=1))
    choices = choose_plan(tensor_bytes=[4 * 2**20] * 25, tensor_backward_s=[1e-3] * 25,
                          forward_s=0.01, cluster=cluster, thresholds_mb=[25],
                          max_segments=2, algorithms=["reduce_bcast"])
    assert {c.chunk_mb for c in choices} == {None, 1, 2, 4, 8, 16}  # below the threshold
    return choices[0].chunk_mb


def test_plan_pipelines_a_bandwidth_bound_link_and_not_a_latency_bound_one():
    # 2 nodes on a slow link: chunks hide the intra-node stages behind the transfer.
    assert _best_reduce_bcast_chunk(num_nodes=2, inter_latency_us=10) is not None
    # 64 nodes at 20 ms: every chunk pays the leaders' ring 126 latencies; whole buckets win.
    assert _best_reduce_bcast_chunk(num_nodes=64, inter_latency_us=20_000) is None


def test_plan_command_rejects_a_bad_chunk(capsys):
    from launch.plan import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--gpus", "16", "--chunk-mb", "0"])
    assert "--chunk-mb must be > 0" in capsys.readouterr().err
    assert parse_args(["--gpus", "16"]).chunk_mb is None  # the plan picks one


def test_launched_together_overlaps_latencies_not_bytes():
    from comms.cost_model import launched_together_s

    link = Link(alpha_s=1e-3, beta_s_per_byte=1e-8)
    sizes = [1e3, 1e5, 1e7]
    p = 4
    alone = [2 * (p - 1) * 1e-3 + 2 * (p - 1) / p * 1e-8 * m for m in sizes]
    assert launched_together_s(sizes_bytes=sizes, num_ranks=p, link=link,
                               concurrency=1) == pytest.approx(sum(alone), rel=1e-12)
    # Two at a time: the three messages' 6 latencies each overlap in pairs.
    want = sum(alone) - 3 * 6e-3 / 2
    assert launched_together_s(sizes_bytes=sizes, num_ranks=p, link=link,
                               concurrency=2) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="concurrency"):
        launched_together_s(sizes_bytes=sizes, num_ranks=p, link=link, concurrency=0)
