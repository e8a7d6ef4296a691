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


@pytest.mark.parametrize("nodes,on_nccl", [
    (((0, 1), (2, 3)), "2d"),          # two levels, equal nodes
    (((0, 1, 2), (3, 4)), "ring"),     # uneven (elastic runs): nccl's own allreduce
    (((0, 1, 2, 3),), "ring"),         # one node: no inter-node level
    (((0,), (1,)), "ring"),            # one rank per node: no intra-node level
    (((0,),), "ring"),                 # one rank
])
def test_auto_variant(nodes, on_nccl):
    topology = Topology(nodes=nodes)
    assert choose_variant(requested="auto", topology=topology, backend="nccl") == on_nccl
    # gloo's reduce-scatter is slow: auto stays with reduce_bcast there, whatever the nodes.
    assert choose_variant(requested="auto", topology=topology, backend="gloo") == "reduce_bcast"
    assert choose_variant(requested="auto", topology=topology) == "reduce_bcast"


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
@pytest.mark.parametrize("requested", ["reduce_bcast", "2d"])
def test_an_explicit_variant_is_used_as_asked(requested, backend):
    # reduce_bcast only when asked for; 2d on uneven nodes is refused later, by the
    # algorithm (comms.allreduce.HierarchicalAllreduce), with the nodes in the message.
    for nodes in (((0, 1), (2, 3)), ((0, 1, 2), (3, 4)), ((0, 1, 2, 3),)):
        assert choose_variant(requested=requested, topology=Topology(nodes=nodes),
                              backend=backend) == requested
