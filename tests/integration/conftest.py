"""One real local Ray cluster for the whole integration session (starting one costs ~10 s)."""

import pytest

from launch.config import compose
from launch.job import start_ray

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # 2 workers x 1 CPU plus slots for Ray Data tasks, as the launcher sizes it.
    started = start_ray(compose(["cluster.num_cpus=4"]))
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def digits_runs(ray_cluster, tmp_path_factory):
    """Runs shared by several tests: two identical 3-epoch runs (same seed)."""
    from launch.job import run_training

    base = ["trainer.epochs=3", "optim.warmup_epochs=1"]
    runs = {}
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        runs[name] = run_training(compose(base + [f"run.output_dir={out}"]))
    runs["overrides"] = base
    return runs
