"""Topology is plain logic: ranks -> nodes -> groups, with uneven, single and 1-per-node cases."""

import pytest

from comms.sync import choose_variant
from comms.topology import Topology, topology_from_node_keys, topology_from_ranks_per_node


def test_node_keys_group_ranks_and_the_lowest_rank_leads():
    topo = topology_from_node_keys(["b", "a", "b", "a", "c"])
    assert topo.nodes == ((0, 2), (1, 3), (4,))
    assert topo.leaders == (0, 1, 4)
    assert topo.world_size == 5 and topo.num_nodes == 3
    assert topo.node_of(3) == (1, 3) and topo.leader_of(3) == 1
    assert not topo.is_uniform


def test_uneven_nodes_three_plus_two():
    topo = topology_from_node_keys(["x", "x", "x", "y", "y"])
    assert topo.nodes == ((0, 1, 2), (3, 4)) and topo.leaders == (0, 3)
    assert topo.describe() == {"nodes": [[0, 1, 2], [3, 4]], "leaders": [0, 3]}


def test_one_node_and_one_rank_per_node():
    one = topology_from_node_keys(["n"] * 4)
    assert one.nodes == ((0, 1, 2, 3),) and one.leaders == (0,)
    spread = topology_from_node_keys(["a", "b", "c"])
    assert spread.nodes == ((0,), (1,), (2,)) and spread.leaders == (0, 1, 2)
    assert spread.is_uniform and spread.cross_groups() == ((0, 1, 2),)


def test_ranks_per_node_override_takes_contiguous_blocks():
    assert topology_from_ranks_per_node(world_size=5, ranks_per_node=3).nodes == ((0, 1, 2), (3, 4))
    assert topology_from_ranks_per_node(world_size=4, ranks_per_node=2).cross_groups() == ((0, 2), (1, 3))
    assert topology_from_ranks_per_node(world_size=2, ranks_per_node=8).nodes == ((0, 1),)


def test_bad_ranks_per_node_names_the_key():
    from comms.config import HierarchicalConfig

    with pytest.raises(ValueError, match="comms.ranks_per_node"):
        HierarchicalConfig(ranks_per_node=0)


def test_topology_rejects_missing_or_repeated_ranks():
    with pytest.raises(AssertionError):
        Topology(nodes=((0, 1), (1, 2)))


@pytest.mark.parametrize("nodes,variant", [
    (((0, 1), (2, 3)), "2d"),             # two levels, equal nodes (nccl)
    (((0, 1, 2), (3, 4)), "reduce_bcast"),  # uneven
    (((0, 1, 2, 3),), "reduce_bcast"),      # one node
    (((0,), (1,)), "reduce_bcast"),         # one rank per node
])
def test_auto_variant(nodes, variant):
    assert choose_variant(requested="auto", topology=Topology(nodes=nodes), backend="nccl") == variant
    # gloo's reduce-scatter is slow: auto stays with reduce_bcast there.
    assert choose_variant(requested="auto", topology=Topology(nodes=nodes)) == "reduce_bcast"
    assert choose_variant(requested="reduce_bcast", topology=Topology(nodes=nodes)) == "reduce_bcast"
