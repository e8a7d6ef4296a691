"""NCCL-like ordering on real gloo ranks: the hierarchical sync in its `ordered` mode (what
it runs on nccl: every stage of every chunk issued from the calling thread in one fixed
order) issues the same collective sequence on every rank and every step, however backward's
timing differs per rank (sleeps injected on some ranks, at a different place each step),
and the gradients still equal the float64 reference."""

import graphlib
import time

import pytest
import torch
from dist_harness import run_ranks
from test_sync import loss_of, rank_batch, reference_grads, tiny_net

RANKS_PER_NODE = 2
WORLD = 4  # 2 + 2
STEPS = 4
VARIANTS = ("reduce_bcast", "2d")


def _sleepy(model, rank, plan):
    """Hooks (after the sync's) that stall backward on ranks 1 and 2 at a parameter that
    moves from step to step: the segments become ready at different times per rank."""
    params = list(model.parameters())
    for index, param in enumerate(params):
        def stall(_p, index=index):
            if rank in (1, 2) and index == (plan["step"] * (rank + 2)) % len(params):
                time.sleep(0.05)
        param.register_post_accumulate_grad_hook(stall)


def _run_variant(rank, world_size, variant, ordered):
    import copy

    from comms.collectives import recording
    from comms.config import HierarchicalConfig
    from comms.sync import FusedSync

    config = HierarchicalConfig(fusion_threshold_mb=0.002, segments=3, split="bytes",
                                variant=variant, ranks_per_node=RANKS_PER_NODE,
                                pipeline_chunk_mb=0.001)
    sync = FusedSync(config, world_size=world_size, device=torch.device("cpu"), ordered=ordered)
    model = tiny_net(seed=rank)
    wrapped = sync.wrap(model)
    initial = copy.deepcopy(model.state_dict())
    plan = {"step": 0}
    _sleepy(model, rank, plan)
    steps = []
    for step in range(STEPS):  # no optimizer: every step's reference is from `initial`
        plan["step"] = step
        model.zero_grad(set_to_none=False)
        with recording() as calls:
            loss_of(wrapped, rank_batch(rank, micro=step)).backward()
            sync.finish()
        steps.append({"calls": list(calls),
                      "grads": [p.grad.clone() for p in model.parameters()]})
    mode = sync.describe()["algorithm"]["ordered"]
    sync.close()
    return {"initial": initial, "steps": steps, "ordered": mode}


def _scenario(rank, world_size):
    return {variant: _run_variant(rank, world_size, variant, ordered=True)
            for variant in VARIANTS} | {"threaded": _run_variant(rank, world_size,
                                                                 "reduce_bcast", ordered=False)}


@pytest.fixture(scope="module")
def results():
    return run_ranks(_scenario, world_size=WORLD)


def _per_group(calls):
    groups: dict = {}
    for call in calls:
        groups.setdefault((call.group, call.ranks), []).append(call)
    return groups


def one_total_order(sequences) -> bool:
    """Whether a single global order of the collectives exists that every rank's issue
    order follows (what nccl needs across communicators). A collective is named by its
    group and its position in that group's sequence; each rank adds the edges of its own
    order; a cycle means two ranks disagree (directly or through others)."""
    graph: dict = {}
    for calls in sequences:
        seen: dict = {}
        names = []
        for call in calls:
            seen[call.group] = seen.get(call.group, -1) + 1
            names.append((call.group, seen[call.group]))
        for before, after in zip(names, names[1:], strict=False):
            graph.setdefault(after, set()).add(before)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return False
    return True


def test_the_order_checker_finds_a_disagreement():
    from comms.collectives import Call

    x = Call("all_reduce", (0, 1), "1", "cpu", "torch.float32", 1)
    y = Call("broadcast", (0, 1), "2", "cpu", "torch.float32", 1)
    assert one_total_order([[x, y], [x, y], [y]])
    assert not one_total_order([[x, y], [y, x]])


@pytest.mark.parametrize("variant", [*VARIANTS, "threaded"])
def test_each_group_sees_one_sequence_on_all_its_members(results, variant):
    # What every mode needs (gloo included): each group's collectives match.
    for step in range(STEPS):
        by_rank = [_per_group(r[variant]["steps"][step]["calls"]) for r in results]
        for group in {g for groups in by_rank for g in groups}:
            members = [groups[group] for rank, groups in enumerate(by_rank) if rank in group[1]]
            assert len(members) == len(group[1]), group
            assert all(m == members[0] for m in members), group


@pytest.mark.parametrize("variant", VARIANTS)
def test_ordered_mode_issues_one_fixed_sequence_whatever_the_timing(results, variant):
    assert [r[variant]["ordered"] for r in results] == [True] * WORLD
    assert not results[0]["threaded"]["ordered"]
    for rank, result in enumerate(results):
        steps = [s["calls"] for s in result[variant]["steps"]]
        assert steps[0] and all(s == steps[0] for s in steps), f"rank {rank} changed order"
    for step in range(STEPS):
        assert one_total_order([r[variant]["steps"][step]["calls"] for r in results])
    if variant == "2d":  # every rank has the same role: the same sequence up to group names
        shapes = [[(c.op, len(c.ranks), c.dtype, c.numel) for c in r[variant]["steps"][0]["calls"]]
                  for r in results]
        assert all(s == shapes[0] for s in shapes)


@pytest.mark.parametrize("variant", [*VARIANTS, "threaded"])
def test_gradients_still_equal_the_float64_reference(results, variant):
    initial = results[0][variant]["initial"]
    for step in range(STEPS):
        expected = reference_grads(initial, WORLD, micros=[step])
        for result in results:
            for got, want in zip(result[variant]["steps"][step]["grads"], expected, strict=True):
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
