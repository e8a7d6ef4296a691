"""FusedSync on real gloo ranks: broadcast on wrap, averaged gradients equal a float64
reference, grads are views into the buffers, the first segment goes out before backward
ends, no_sync accumulates, and training matches comms=ddp."""

import copy

import pytest
import torch
from dist_harness import run_ranks
from torch import nn

BATCH = 4


def tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def rank_batch(rank, micro=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(50 + 10 * rank + micro)
    images = torch.randn(BATCH, 1, 8, 8, generator=generator, dtype=torch.float64).to(dtype)
    return images, torch.randint(0, 10, (BATCH,), generator=generator)


def loss_of(model, batch):
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def _sync_scenario(rank, world_size, overrides):
    from comms.registry import SYNCS, build_grad_sync

    settings = {"fusion_threshold_mb": 0.002, "segments": 3, **overrides}
    config = SYNCS.get(settings["name"]).schema(**settings)
    model = tiny_net(seed=rank)  # different on every rank: wrap must broadcast rank 0's
    initial = copy.deepcopy(model.state_dict())
    sync = build_grad_sync(config, world_size=world_size, device=torch.device("cpu"))
    wrapped = sync.wrap(model)
    out = {"initial": initial if rank == 0 else None, "describe": sync.describe(),
           "after_wrap": copy.deepcopy(model.state_dict())}
    loss_of(wrapped, rank_batch(rank)).backward()
    sync.finish()
    out["describe_after_one"] = sync.describe()
    out["grads"] = [p.grad.clone() for p in model.parameters()]
    out["last_step"] = sync.last_step
    flat = sync.buffers.flat
    out["views"] = all(
        any(f.data_ptr() <= p.grad.data_ptr() < f.data_ptr() + f.numel() * 4 for f in flat)
        for p in model.parameters())
    # Gradient accumulation: micro-step 1 inside no_sync launches nothing.
    model.zero_grad(set_to_none=False)
    with sync.no_sync():
        loss_of(wrapped, rank_batch(rank, micro=1)).backward()
        out["launched_in_no_sync"] = len(sync._handles)
    sync.finish()
    loss_of(wrapped, rank_batch(rank, micro=2)).backward()
    sync.finish()
    out["accumulated"] = [p.grad.clone() for p in model.parameters()]
    out["views_after_steps"] = all(p.grad.data_ptr() == v.data_ptr()
                                   for p, v in zip(model.parameters(), sync.buffers.views, strict=True))
    out["describe_after"] = sync.describe()
    sync.close()
    return out


def reference_grads(initial, world_size, micros):
    """Average over ranks of the summed micro-batch gradients, all in float64."""
    model = tiny_net(seed=0).double()
    model.load_state_dict(initial)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world_size):
        for micro in micros:
            model.zero_grad(set_to_none=True)
            loss_of(model, rank_batch(rank, micro, torch.float64)).backward()
            for acc, p in zip(total, model.parameters(), strict=True):
                acc += p.grad
    return [acc / world_size for acc in total]


CASES = {
    "hier-4r-2+2-2d": (4, {"name": "hierarchical", "ranks_per_node": 2, "variant": "2d"}),
    "hier-5r-3+2": (5, {"name": "hierarchical", "ranks_per_node": 3}),
    "fused-3r-bf16": (3, {"name": "fused", "compress": "bf16"}),
}


@pytest.fixture(scope="module", params=list(CASES))
def scenario(request):
    world_size, overrides = CASES[request.param]
    results = run_ranks(_sync_scenario, world_size=world_size, args=(overrides,))
    return {"world_size": world_size, "overrides": overrides, "results": results}


def test_wrap_broadcasts_rank0_state(scenario):
    initial = scenario["results"][0]["initial"]
    for result in scenario["results"]:
        for key, value in initial.items():
            torch.testing.assert_close(result["after_wrap"][key], value, rtol=0, atol=0)


def tolerance(scenario):
    return 2e-2 if scenario["overrides"].get("compress", "none") != "none" else 1e-5


def test_grads_are_the_float64_average(scenario):
    world_size, results = scenario["world_size"], scenario["results"]
    expected = reference_grads(results[0]["initial"], world_size, micros=[0])
    tol = tolerance(scenario)
    for result in results:
        for got, want in zip(result["grads"], expected, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_no_sync_accumulates_then_averages(scenario):
    world_size, results = scenario["world_size"], scenario["results"]
    expected = reference_grads(results[0]["initial"], world_size, micros=[1, 2])
    tol = tolerance(scenario)
    for result in results:
        assert result["launched_in_no_sync"] == 0
        for got, want in zip(result["accumulated"], expected, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_grads_are_views_into_the_flat_buffers(scenario):
    assert all(r["views"] and r["views_after_steps"] for r in scenario["results"])


def test_first_segment_goes_out_before_backward_ends(scenario):
    for result in scenario["results"]:
        step = result["last_step"]
        assert len(step["launch_s"]) == result["describe"]["plan"]["num_segments"] >= 2
        assert step["grads_left_at_launch"][0] > 0  # gradients still to come from backward
        assert step["launch_s"][0] < step["last_hook_s"]


def test_describe_reports_groups_and_plan(scenario):
    info = scenario["results"][0]["describe"]
    assert info["world_size"] == scenario["world_size"]
    assert info["plan"]["num_buckets"] >= 3
    if info["name"] == "hierarchical":
        nodes = info["topology"]["nodes"]
        assert sorted(r for node in nodes for r in node) == list(range(scenario["world_size"]))
        assert info["groups"]["leaders"] == [node[0] for node in nodes]


def test_segment_split_comes_from_the_cost_model_after_step_two(scenario):
    # Step 1 is warm-up; step 2 (the accumulated one: no_sync steps do not count) is
    # measured, and the split changes after it.
    for result in scenario["results"]:
        before, after = result["describe"]["plan"], result["describe_after"]["plan"]
        assert result["describe_after_one"]["plan"]["split"] == "bytes"
        assert before["split"] == "bytes" and after["split"] == "cost_model"
        assert after["num_buckets"] == before["num_buckets"]
        assert 1 <= after["num_segments"] <= 3
        covered = [b for segment in after["segments"] for b in segment]
        assert covered == list(range(after["num_buckets"]))
    # Every rank adopted rank 0's split.
    assert len({str(r["describe_after"]["plan"]["segments"]) for r in scenario["results"]}) == 1
