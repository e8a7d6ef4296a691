"""Who talks to whom: ranks -> nodes -> communication groups, as plain data.

A `Topology` is computed from one node key per rank (a Ray node id or an IP) or from a
fixed `comms.ranks_per_node`; it lists the ranks of each node (the intra-node groups) and
one leader per node (the leader group that crosses the slow links). Nothing here touches
torch.distributed, so uneven nodes, one node and one rank per node are tested without
processes; `comms.allreduce.build_groups` turns a Topology into process groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Ranks grouped by node. Nodes are ordered by their lowest rank; the lowest rank of
    each node is its leader, so rank 0 always leads the first node."""

    nodes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        ranks = sorted(rank for node in self.nodes for rank in node)
        assert ranks == list(range(len(ranks))), f"ranks must be 0..P-1 once each: {self.nodes}"
        assert all(node for node in self.nodes), "empty node"

    @property
    def world_size(self) -> int:
        return sum(len(node) for node in self.nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def leaders(self) -> tuple[int, ...]:
        return tuple(node[0] for node in self.nodes)

    @property
    def is_uniform(self) -> bool:
        """Every node has the same number of ranks (needed by the 2-D variant)."""
        return len({len(node) for node in self.nodes}) == 1

    def node_of(self, rank: int) -> tuple[int, ...]:
        for node in self.nodes:
            if rank in node:
                return node
        raise KeyError(rank)

    def leader_of(self, rank: int) -> int:
        return self.node_of(rank)[0]

    def cross_groups(self) -> tuple[tuple[int, ...], ...]:
        """For uniform nodes: group i holds the i-th rank of every node (the 2-D variant's
        inter-node rings, one per local rank)."""
        assert self.is_uniform, "cross groups need the same number of ranks on every node"
        return tuple(zip(*self.nodes, strict=True))

    def describe(self) -> dict:
        return {"nodes": [list(node) for node in self.nodes], "leaders": list(self.leaders)}


def topology_from_node_keys(node_keys: Sequence[str]) -> Topology:
    """`node_keys[rank]` names the rank's node (Ray node id, IP, hostname)."""
    if not node_keys:
        raise ValueError("topology needs at least one rank")
    by_key: dict[str, list[int]] = {}
    for rank, key in enumerate(node_keys):
        by_key.setdefault(key, []).append(rank)
    return Topology(nodes=tuple(sorted(tuple(ranks) for ranks in by_key.values())))


def topology_from_ranks_per_node(*, world_size: int, ranks_per_node: int) -> Topology:
    """Contiguous blocks of `ranks_per_node` ranks; the last node takes the remainder."""
    assert ranks_per_node >= 1 and world_size >= 1, (ranks_per_node, world_size)
    return Topology(nodes=tuple(
        tuple(range(start, min(start + ranks_per_node, world_size)))
        for start in range(0, world_size, ranks_per_node)))
