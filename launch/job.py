"""Glue between a validated Config and Ray: start or join the cluster, build the datasets
and the TorchTrainer, run it, and turn its result into the run summary."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from launch.config import Config, to_plain_dict

SUMMARY_FILE = "summary.json"
RAY_DATA_LOGGING = Path(__file__).resolve().parent / "ray_data_logging.yaml"


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
    ray.init(
        # "local": always a new embedded cluster. With no address Ray would join whatever
        # cluster last ran on this machine (`ray start`, another job), against the contract.
        address="local",
        num_cpus=cluster.num_cpus or default_cpus,
        include_dashboard=cluster.include_dashboard,
        object_store_memory=memory * 1024 * 1024 if memory else None,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
    )
    return True


def build_trainer(config: Config, *, datasets: dict, info, run_dir: Path, callbacks=None):
    from ray.data import DataContext, ExecutionOptions
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    from launch.restarts import RestartLog
    from trainers.loop import train_loop_per_worker

    DataContext.get_current().enable_progress_bars = False
    trainer = config.trainer
    resources = {"CPU": trainer.cpus_per_worker, **trainer.worker_resources}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "info": info, "run_dir": str(run_dir)},
        # An elastic range: Ray restarts the group from the last checkpoint at a new size
        # when workers fail or nodes join; the loop keeps the global batch and schedule.
        scaling_config=ScalingConfig(
            num_workers=trainer.worker_range, use_gpu=trainer.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=trainer.resize_interval_s),
        run_config=RunConfig(
            name=config.run.name, storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=trainer.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=trainer.num_checkpoints_to_keep),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[*(callbacks or []), RestartLog(run_dir=str(run_dir))],
        ),
        torch_config=TorchConfig(backend=config.comms.backend) if config.comms.backend else None,
        datasets=datasets,
        # Train is split into equal streaming shards; val is read whole by every worker,
        # which evaluates its share of batches, so no val sample is dropped by the split.
        # preserve_order makes the split (and so each worker's data) deterministic.
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ExecutionOptions(preserve_order=True)),
    )


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
            ray.shutdown()


def run_training(config: Config) -> dict:
    """Train with `config` (already validated); write and return the summary."""
    from ingest import build_datasets

    with ray_session(config) as output_dir:
        begin = time.perf_counter()
        datasets, info = build_datasets(config.data, seed=config.trainer.seed)
        trainer = build_trainer(config, datasets=datasets, info=info,
                                run_dir=output_dir / config.run.name)
        result = trainer.fit()
        summary = make_summary(config, result=result, seconds=time.perf_counter() - begin,
                               run_dir=output_dir / config.run.name)
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def make_summary(config: Config, *, result, seconds: float, run_dir: Path) -> dict:
    from launch.restarts import read_restarts

    metrics = result.metrics or {}
    return {
        # restarts, world_size_history (one entry per started worker group), restart_events
        **read_restarts(run_dir),
        "val_top1": metrics.get("val_top1"),
        "train_loss": metrics.get("train_loss"),
        "images_per_sec": metrics.get("images_per_sec_mean"),
        "epochs_completed": metrics.get("epoch", 0),
        "global_steps": metrics.get("global_step", 0),
        "world_size": metrics.get("world_size"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "steps_per_epoch": metrics.get("steps_per_epoch"),
        "skipped_steps": metrics.get("skipped_steps", 0),
        # Undecodable images the input pipeline dropped (distinct samples, train and val).
        "skipped_samples": metrics.get("skipped_samples", 0),
        "comms": metrics.get("comms"),
        "resumed_from_steps": metrics.get("resumed_from_steps", []),
        "wall_seconds": round(seconds, 2),
        "history": metrics.get("history", []),
        "summary_path": str(Path(config.run.output_dir) / SUMMARY_FILE),
        "config": to_plain_dict(config),
    }


TUNE_SUMMARY_FILE = "tune_summary.json"


def run_tune_sweep(config: Config) -> dict:
    """Run the configured sweep; write tune_summary.json and tune.png; return the summary."""
    from tune.plot import plot_sweep
    from tune.sweep import run_sweep

    with ray_session(config) as output_dir:
        summary = run_sweep(config)
        summary["leaked_cpus"] = _cpus_still_held()
    summary["summary_path"] = str(output_dir / TUNE_SUMMARY_FILE)
    summary["plot"] = str(output_dir / "tune.png")
    summary["config"] = to_plain_dict(config)
    (output_dir / TUNE_SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    plot_sweep(summary, path=output_dir / "tune.png")
    return summary


def _cpus_still_held(*, timeout_s: float = 30.0) -> float:
    """CPUs not yet returned to the cluster after the sweep (trials release asynchronously)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout_s
    while True:
        held = total - ray.available_resources().get("CPU", 0.0)
        if held <= 1e-6 or time.monotonic() > deadline:
            return held
        time.sleep(1.0)
