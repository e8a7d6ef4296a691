"""The TorchTrainer for a validated Config: datasets, scaling, failures, checkpoints and
callbacks; running it; and the run summary made from its result."""

from __future__ import annotations

import json
import time
from pathlib import Path

from job.config import Config, to_plain_dict
from job.curves import CURVES_FILE, write_curves
from job.restarts import RestartLog, read_restarts
from job.session import cluster_cpus, ray_session

SUMMARY_FILE = "summary.json"


def preprocess_in_workers(config: Config) -> bool:
    """Whether the workers preprocess an in-memory set themselves (ingest/memory.py),
    from the CPUs the connected cluster really has against what training holds."""
    from ingest.formats import format_of
    from ingest.memory import use_worker_preprocessing

    trainer = config.trainer
    return use_worker_preprocessing(
        choice=config.data.preprocess_on, in_memory=format_of(config.data.name).in_memory,
        cluster_cpus=cluster_cpus(), num_workers=trainer.max_world_size,
        training_cpus=trainer.max_world_size * trainer.cpus_per_worker)


def pipeline_group_size(config: Config, *, in_workers: bool):
    """The worker bounds, cut so that the group leaves the Ray Data tasks their CPUs
    (job/headroom.py); printed when they differ from the config's."""
    import ray

    from job.headroom import group_size, pipeline_cpus

    trainer = config.trainer
    group = group_size(
        min_workers=trainer.min_world_size, max_workers=trainer.max_world_size,
        cpus_per_worker=trainer.cpus_per_worker,
        cluster_cpus=ray.cluster_resources().get("CPU", 0.0),
        needs_cpus=0 if in_workers else pipeline_cpus(config.data.preprocess_cpus))
    if group.note:
        print(f"[raylars] {group.note}", flush=True)
    return group


def build_trainer(config: Config, *, datasets: dict, info, run_dir: Path, callbacks=None,
                  loop=None, loop_extra: dict | None = None):
    """The run's TorchTrainer; `loop` (default: job.loop.train_loop_per_worker) and
    `loop_extra` (more train_loop_config entries) let another job, e.g. job/evaluate.py,
    run on the same workers and pipeline."""
    from ray.data import DataContext
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    from ingest import trainer_data_config
    from job.loop import train_loop_per_worker
    from job.torch_store import StoreOnMasterAddrConfig

    DataContext.get_current().enable_progress_bars = False
    trainer = config.trainer
    resources = {"CPU": trainer.cpus_per_worker, **trainer.worker_resources}
    # No Datasets: the workers preprocess the in-memory set themselves (ingest/memory.py).
    in_workers = not datasets
    assert not in_workers or info.in_memory is not None, "no data for the workers"
    group = pipeline_group_size(config, in_workers=in_workers)
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config={"config": config, "info": info, "run_dir": str(run_dir),
                           "preprocess_in_workers": in_workers, **(loop_extra or {})},
        # An elastic range: Ray restarts the group from the last checkpoint at a new size
        # when workers fail or nodes join; the loop keeps the global batch and schedule.
        scaling_config=ScalingConfig(
            num_workers=group.scaling, use_gpu=trainer.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=trainer.resize_interval_s),
        run_config=RunConfig(
            name=config.run.name, storage_path=str(run_dir.parent),
            # Preemptions (a node's drain notice) restart the group without using up
            # max_failures, which is left for real failures.
            failure_config=FailureConfig(max_failures=trainer.max_failures,
                                         max_preemption_failures=trainer.max_preemptions),
            checkpoint_config=CheckpointConfig(num_to_keep=trainer.num_checkpoints_to_keep),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[*(callbacks or []), RestartLog(run_dir=str(run_dir))],
        ),
        # The rendezvous store listens on the master address, not every interface.
        torch_config=StoreOnMasterAddrConfig(backend=config.comms.backend),
        # Empty when the workers preprocess in-memory data themselves.
        datasets=datasets,
        # Train as each rank's share of every global batch (a resume mid-epoch, at any
        # world size, trains each remaining sample once; ingest/order.py), its blocks sized
        # for the CPUs the workers leave; val read once, a slice per rank.
        dataset_config=trainer_data_config(info, config=config.data,
                                           cpus_per_worker=trainer.cpus_per_worker,
                                           global_batch_size=trainer.global_batch_size,
                                           max_steps=trainer.max_steps_per_epoch),
    )


def run_training(config: Config) -> dict:
    """Train with `config` (already validated); write and return the summary."""
    from ingest import build_datasets

    stamps = {"run_start": time.time()}
    begin = time.perf_counter()
    with ray_session(config) as output_dir:
        stamps["ray_started"] = time.time()
        datasets, info = build_datasets(config.data, seed=config.trainer.seed,
                                        in_workers=preprocess_in_workers(config))
        stamps["datasets_built"] = time.time()
        trainer = build_trainer(config, datasets=datasets, info=info,
                                run_dir=output_dir / config.run.name)
        result = trainer.fit()
        summary = make_summary(config, result=result, seconds=time.perf_counter() - begin,
                               run_dir=output_dir / config.run.name)
    summary["startup_s"] = startup_breakdown(stamps, (result.metrics or {}).get("startup", {}))
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    write_curves(summary, config=config, num_train=info.num_train, num_classes=info.num_classes,
                 path=output_dir / CURVES_FILE)
    return summary


def startup_breakdown(driver: dict, worker: dict) -> dict:
    """Seconds of each start-up phase (None where a stamp is missing, e.g. a run restored
    after it had finished) and `run_start`, the driver's wall-clock start."""
    stamps = {**driver, **worker}
    order = ("run_start", "ray_started", "datasets_built", "worker_start", "first_batch",
             "first_step")
    names = ("ray_start", "dataset_setup", "worker_group_start", "first_batch", "first_step")
    phases = {name: (round(stamps[b] - stamps[a], 3) if a in stamps and b in stamps else None)
              for name, a, b in zip(names, order[:-1], order[1:], strict=True)}
    last = stamps.get("first_step")
    phases["to_first_step"] = round(last - stamps["run_start"], 3) if last else None
    phases["run_start"] = stamps["run_start"]
    return phases


def make_summary(config: Config, *, result, seconds: float, run_dir: Path) -> dict:
    metrics = result.metrics or {}
    return {
        # restarts, world_size_history (one entry per started worker group), restart_events
        **read_restarts(run_dir),
        "val_top1": metrics.get("val_top1"),
        "val_top5": metrics.get("val_top5"),
        # Val samples evaluated (each once, across all workers).
        "val_samples": metrics.get("val_samples"),
        "train_loss": metrics.get("train_loss"),
        "images_per_sec": metrics.get("images_per_sec"),
        "epochs_completed": metrics.get("epoch", 0),
        "global_steps": metrics.get("global_step", 0),
        "world_size": metrics.get("world_size"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "steps_per_epoch": metrics.get("steps_per_epoch"),
        "skipped_steps": metrics.get("skipped_steps", 0),
        # Undecodable images the input pipeline dropped (distinct samples, train and val).
        "skipped_samples": metrics.get("skipped_samples", 0),
        "comms": metrics.get("comms"),
        # Where the preprocessing ran: "tasks" (Ray Data) or "workers" (data.preprocess_on).
        "data_feed": metrics.get("data_feed"),
        "resumed_from_steps": metrics.get("resumed_from_steps", []),
        # Each resume: global step, epoch, step and sample position in it, world size,
        # and the work lost (steps and samples redone; null where unknown).
        "resumes": metrics.get("resumes", []),
        "wall_seconds": round(seconds, 2),
        "history": metrics.get("history", []),
        # The step lines' records: step, epoch, loss, lr, images_per_sec (trainers/progress.py).
        "step_log": metrics.get("step_log", []),
        "summary_path": str(Path(config.run.output_dir) / SUMMARY_FILE),
        "config": to_plain_dict(config),
    }
