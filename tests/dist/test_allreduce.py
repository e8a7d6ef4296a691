"""Flat and hierarchical allreduce on real gloo ranks equal a float64 reference sum."""

import pytest
import torch
from dist_harness import run_ranks

SIZES = (1, 7, 1000, 65537)


def rank_tensors(rank, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(n, generator=generator, dtype=torch.float64).to(dtype) for n in SIZES]


def reference_sums(world_size):
    per_rank = [rank_tensors(r, torch.float64) for r in range(world_size)]
    # Plain float64 sum over ranks, element by element.
    return [sum(tensors[i] for tensors in per_rank) for i in range(len(SIZES))]


def _allreduce_all_ways(rank, world_size, node_keys):
    from comms.allreduce import HierarchicalAllreduce, RingAllreduce, build_groups
    from comms.sync import discover_topology

    topology = discover_topology(ranks_per_node=None, node_key=node_keys[rank])
    algorithms = {"ring": RingAllreduce()}
    groups = build_groups(topology, cross=topology.is_uniform)
    variants = ["reduce_bcast", "2d"] if topology.is_uniform else ["reduce_bcast"]
    for variant in variants:
        algorithms[variant] = HierarchicalAllreduce(groups, variant=variant)
        # 10 KB chunks: the 65537-element buffer crosses the pipeline in 26 pieces.
        algorithms[f"{variant}-chunked"] = HierarchicalAllreduce(groups, variant=variant,
                                                                 chunk_mb=0.01)
        # nccl's mode: every stage issued by the caller, in one fixed order.
        algorithms[f"{variant}-ordered"] = HierarchicalAllreduce(groups, variant=variant,
                                                                 chunk_mb=0.01, ordered=True)
    out = {"nodes": topology.nodes}
    for name, algorithm in algorithms.items():
        tensors = rank_tensors(rank)
        if name.startswith("2d"):  # the sync pads buffers to a multiple of ranks per node
            size = len(topology.nodes[0])
            tensors = [torch.cat([t, t.new_zeros(-len(t) % size)]) for t in tensors]
        # Two launches in flight at once, as the sync's segments are.
        handles = [algorithm.launch(tensors[:3]), algorithm.launch(tensors[3:])]
        for handle in handles:
            handle.wait()
        out[name] = [t[:n].clone() for t, n in zip(tensors, SIZES, strict=True)]
        algorithm.close()
    return out


@pytest.mark.parametrize("node_keys", [
    ["a", "a", "a", "b"],            # 4 ranks, 3 + 1
    ["a", "a", "a", "b", "b"],       # 5 ranks, 3 + 2
    ["a", "b", "a", "b"],            # 4 ranks, 2 + 2 interleaved: 2d variant too
], ids=["4r-3+1", "5r-3+2", "4r-2+2"])
def test_every_algorithm_equals_the_float64_sum(node_keys):
    world_size = len(node_keys)
    results = run_ranks(_allreduce_all_ways, world_size=world_size, args=(node_keys,))
    expected = reference_sums(world_size)
    assert len(results[0]["nodes"]) == len(set(node_keys))
    names = [name for name in results[0] if name != "nodes"]
    assert {"ring", "reduce_bcast", "reduce_bcast-chunked", "reduce_bcast-ordered"} <= set(names)
    for rank, result in enumerate(results):
        for name in names:
            for got, want in zip(result[name], expected, strict=True):
                torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5,
                                           msg=f"{name} on rank {rank}")
