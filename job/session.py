"""Start or join Ray for a run, and shut down what we started."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from job.config import Config

RAY_DATA_LOGGING = Path(__file__).resolve().parent / "ray_data_logging.yaml"

# The CPUs the embedded cluster this process started really has (its logical CPUs add
# slots for Ray Data beyond them); None when we joined a cluster or started none.
_embedded_cpus: float | None = None


def cluster_cpus() -> float:
    """CPUs of the cluster Ray is connected to, as hardware: for our embedded cluster the
    machine's (or cluster.num_cpus), else what the cluster's nodes declare."""
    import ray

    return _embedded_cpus or ray.cluster_resources().get("CPU", 0.0)


def start_ray(config: Config) -> bool:
    """Join `ray.address` or start a local cluster bound to loopback. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    # Ray Data's console logs at WARNING; Train's print patch off, since it echoes each
    # print twice once stdout is wrapped, and our progress lines are plain prints.
    quiet = {"RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING), "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    os.environ.update(quiet)  # the driver's own Ray Data logger reads these too
    runtime_env = {"env_vars": quiet}
    if config.ray.address is not None:
        ray.init(address=config.ray.address, runtime_env=runtime_env)
        return True
    cluster = config.cluster
    trainer = config.trainer
    # Logical CPUs beyond what the workers hold, so Ray Data tasks can still be scheduled.
    default_cpus = max(os.cpu_count() or 1,
                       int(trainer.max_world_size * trainer.cpus_per_worker)) + 2
    memory = cluster.object_store_memory_mb
    global _embedded_cpus
    _embedded_cpus = cluster.num_cpus or os.cpu_count() or 1
    ray.init(
        # "local": always a new embedded cluster. With no address Ray would join whatever
        # cluster last ran on this machine (`ray start`, another job), against the contract.
        address="local",
        num_cpus=cluster.num_cpus or default_cpus,
        # Keep the dashboard (null): Train V2's placement-group cleaner polls its state
        # API, and without it prints a warning every second (measured: ~1 s of start-up).
        include_dashboard=cluster.include_dashboard,
        object_store_memory=memory * 1024 * 1024 if memory else None,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
    )
    return True


@contextlib.contextmanager
def ray_session(config: Config):
    """Create the output directory (made absolute in the config), start or join Ray, and
    shut down on exit what we started. Yields the output directory."""
    import ray

    output_dir = Path(config.run.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config.run.output_dir = str(output_dir)
    started = start_ray(config)
    try:
        yield output_dir
    finally:
        if started:
            global _embedded_cpus
            _embedded_cpus = None
            ray.shutdown()
