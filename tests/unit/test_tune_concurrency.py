"""tune/runner.py: how many trials run at once when tune.max_concurrent_trials is null.
Pure arithmetic of (cluster resources, trial config): no Ray needed."""

import pytest

from tune.runner import trial_resources, trials_that_fit

P4D_NODE = {"CPU": 96.0, "GPU": 8.0, "memory": 1.1e12}


def fit(cluster, *, workers, cpus=1.0, gpu=False, extra=None):
    return trials_that_fit(cluster, num_workers=workers, cpus_per_worker=cpus, use_gpu=gpu,
                           worker_resources=extra or {})


def test_a_trial_holds_its_workers_and_one_cpu_for_ray_data():
    assert trial_resources(num_workers=4, cpus_per_worker=2, use_gpu=True,
                           worker_resources={"spot": 0.5}) == {"CPU": 9, "GPU": 4, "spot": 2.0}
    assert trial_resources(num_workers=2, cpus_per_worker=1, use_gpu=False,
                           worker_resources={}) == {"CPU": 3}


def test_cpu_only_trials_are_counted_on_cpus():
    assert fit({"CPU": 4.0}, workers=2) == 1  # 2 x 1 + 1 = 3 CPUs each
    assert fit({"CPU": 12.0}, workers=2) == 4
    assert fit({"CPU": 12.0, "GPU": 8.0}, workers=2) == 4  # GPUs unused by CPU trials


@pytest.mark.parametrize(("nodes", "workers", "expected"), [
    (1, 8, 1),   # 8 GPUs: one 8-worker trial, though the CPUs would hold 5 (17 each)
    (1, 2, 4),   # GPUs bound: 8 // 2
    (1, 1, 8),   # 8 // 1 GPUs; CPUs: 96 // 3 = 32
    (4, 8, 4),
])
def test_gpu_trials_are_bounded_by_gpus_as_well_as_cpus(nodes, workers, expected):
    cluster = {name: amount * nodes for name, amount in P4D_NODE.items()}
    assert fit(cluster, workers=workers, cpus=2, gpu=True) == expected


def test_cpus_bound_when_workers_hold_many():
    # 1 worker x 95 CPUs + 1 = 96 per trial: one per p4d node although 8 GPUs are free.
    assert fit({"CPU": 96.0 * 2, "GPU": 16.0}, workers=1, cpus=95, gpu=True) == 2
    # 4 workers x 11 CPUs + 1 = 45: two per node, though the GPUs would hold two as well.
    assert fit(P4D_NODE, workers=4, cpus=11, gpu=True) == 2
    assert fit(P4D_NODE, workers=2, cpus=20, gpu=True) == 2  # 41 each; GPUs would hold 4


def test_extra_worker_resources_bound_too():
    cluster = {"CPU": 64.0, "spot_gpu": 3.0}
    assert fit(cluster, workers=1, extra={"spot_gpu": 1.0}) == 3


def test_a_trial_that_fits_nowhere_still_runs_alone():
    assert fit({"CPU": 2.0}, workers=4) == 1
    assert fit({"CPU": 96.0}, workers=1, gpu=True) == 1  # no GPU in the cluster (yet)


def test_float_shares_do_not_lose_a_trial_to_rounding():
    assert fit({"CPU": 1.3}, workers=3, cpus=0.1) == 1  # 3 x 0.1 + 1 = 1.3
