"""The seam every comms collective goes through (comms/collectives.py), on real gloo ranks:
every tensor a fused or hierarchical step hands to torch.distributed is on the sync's
device, a tensor on another device is refused with a clear error, and the process groups
are created once, at construction, in one order on every rank."""

import pytest
import torch
from dist_harness import run_ranks
from test_sync import loss_of, rank_batch, tiny_net

NODE_KEYS = ["a", "a", "b", "b"]  # 2 + 2: every variant applies
SYNCS = {
    "fused": {"name": "fused"},
    "reduce_bcast": {"name": "hierarchical", "ranks_per_node": 2, "variant": "reduce_bcast",
                     "pipeline_chunk_mb": 0.001},
    "2d": {"name": "hierarchical", "ranks_per_node": 2, "variant": "2d"},
}


def test_a_tensor_on_another_device_is_refused_before_torch_distributed_sees_it():
    from comms.collectives import Collectives, recording

    comm = Collectives(torch.device("cpu"))
    wrong = torch.empty(3, device="meta")  # stands in for a CPU tensor on an nccl sync
    with recording() as calls:
        with pytest.raises(RuntimeError, match=r"all_reduce .* on meta.* communicates on cpu"):
            comm.all_reduce(wrong)
        with pytest.raises(RuntimeError, match="broadcast"):
            comm.broadcast(wrong, src=0)
        with pytest.raises(RuntimeError, match="reduce_scatter"):  # the output is checked too
            comm.reduce_scatter(wrong, torch.zeros(6), group=None)
    assert calls == []  # refused calls were never issued


def _steps(rank, world_size, name, overrides, calls):
    from comms.collectives import recording
    from comms.registry import SYNCS as REGISTRY

    settings = {"fusion_threshold_mb": 0.002, "segments": 3, "split": "auto", **overrides}
    config = REGISTRY.get(settings["name"]).schema(**settings)
    with recording() as built:
        sync = REGISTRY.build(settings["name"], config=config, world_size=world_size,
                              device=torch.device("cpu"))
    model = tiny_net(seed=rank)
    with recording() as stepped:
        wrapped = sync.wrap(model)
        for step in range(3):  # step 2 is measured, then the split is broadcast
            model.zero_grad(set_to_none=False)
            loss_of(wrapped, rank_batch(rank, micro=step)).backward()
            sync.finish()
        sync.sync_buffers(model)
        sync.all_reduce_sum(torch.ones(2, dtype=torch.float64))
    calls[name] = {"built": list(built), "stepped": list(stepped),
                   "split": sync.split_source}
    try:
        sync.all_reduce_sum(torch.ones(2, device="meta"))
    except RuntimeError as error:
        calls[name]["wrong_device"] = str(error)
    sync.close()


def _scenario(rank, world_size):
    from comms.collectives import recording
    from comms.sync import discover_topology

    with recording() as exchange:
        topology = discover_topology(ranks_per_node=None, node_key=NODE_KEYS[rank])
    calls = {"topology": topology.nodes, "exchange": list(exchange)}
    for name, overrides in SYNCS.items():
        _steps(rank, world_size, name, overrides, calls)
    return calls


@pytest.fixture(scope="module")
def recorded():
    return run_ranks(_scenario, world_size=len(NODE_KEYS))


def test_topology_exchange_runs_on_the_syncs_device(recorded):
    for result in recorded:
        assert result["topology"] == ((0, 1), (2, 3))
        assert [c.op for c in result["exchange"]] == ["all_gather", "all_gather"]
        assert {c.device for c in result["exchange"]} == {"cpu"}


@pytest.mark.parametrize("name", list(SYNCS))
def test_every_tensor_of_a_step_is_on_the_syncs_device(recorded, name):
    expected_ops = {"fused": {"all_reduce", "broadcast"},
                    "reduce_bcast": {"reduce", "all_reduce", "broadcast"},
                    "2d": {"reduce_scatter", "all_reduce", "all_gather", "broadcast"}}[name]
    for result in recorded:
        calls = result[name]["stepped"]
        with_tensors = [c for c in calls if c.op not in ("barrier", "new_group")]
        assert with_tensors and {c.device for c in with_tensors} == {"cpu"}, calls
        assert expected_ops <= {c.op for c in calls}
        assert result[name]["split"] == "cost_model"  # the split broadcast was among them
        assert "communicates on cpu" in result[name]["wrong_device"]


@pytest.mark.parametrize("name", list(SYNCS))
def test_groups_are_created_once_in_one_order_on_every_rank(recorded, name):
    built = [[c.ranks for c in r[name]["built"] if c.op == "new_group"] for r in recorded]
    assert all(b == built[0] for b in built)  # the same new_group sequence on every rank
    groups = built[0]
    expected = {"fused": [],  # the world group only
                "reduce_bcast": [(0, 1), (2, 3), (0, 1), (2, 3), (0, 2)],
                "2d": [(0, 1), (2, 3), (0, 1), (2, 3), (0, 2), (0, 2), (1, 3)]}[name]
    assert groups == expected
    for result in recorded:  # none later: not in wrap, steps, the split or the buffer sync
        assert not [c for c in result[name]["stepped"] if c.op == "new_group"]
