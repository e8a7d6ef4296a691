"""The train_loop_per_worker every Ray Train worker runs: a thin adapter that reads Ray's
context (rank, world size, device, dataset shards, the checkpoint to resume) and hands
them to the per-rank trainer (trainers/worker.py), whose epoch reports it turns into
`ray.train.report` calls with checkpoints."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from ingest import DatasetInfo, announce_epoch, num_skipped
from ingest.memory import MemoryFeed
from job.config import Config
from trainers.checkpoint import CHECKPOINT_FILE, load_state, write_state
from trainers.worker import Trainer


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class RayFeed:
    """A rank's `trainers.worker.DataFeed` over Ray Data: its streaming shard of the train
    split (shuffled locally with a (seed, epoch, rank) seed) and its slice of the val split
    (each val sample is in exactly one rank's slice; ingest/sharding.py)."""

    name = "tasks"  # where the preprocessing runs (summary.json's `data_feed`)

    def __init__(self, info: DatasetInfo, *, config: Config, rank: int, world_size: int,
                 device: torch.device):
        self.info, self.config, self.rank, self.device = info, config, rank, device
        self.world_size = world_size
        self.num_classes, self.in_channels = info.num_classes, info.in_channels
        self.num_train, self.mean, self.std = info.num_train, info.mean, info.std
        self.shard_rows = info.num_train // world_size
        self.train = ray.train.get_dataset_shard("train")
        self.val = ray.train.get_dataset_shard("val")

    def train_batches(self, *, epoch: int, batch_size: int):
        # The preprocessing (Ray Data tasks) derives this epoch's sample order and
        # augmentation from it; see ingest/pipeline.py.
        announce_epoch(self.info, epoch=epoch)
        data = self.config.data
        return self.train.iter_torch_batches(
            batch_size=batch_size, drop_last=True, prefetch_batches=data.prefetch_batches,
            local_shuffle_buffer_size=max(batch_size, min(self.shard_rows, data.local_shuffle_rows)),
            local_shuffle_seed=derived_seed(self.config.trainer.seed, epoch, self.rank),
            device=self.device, pin_memory=self.device.type == "cuda")

    def val_batches(self, *, batch_size: int):
        """This rank's slice of the val split: only its own samples are decoded."""
        return self.val.iter_torch_batches(batch_size=batch_size, device=self.device,
                                           prefetch_batches=self.config.data.prefetch_batches)

    def num_skipped(self) -> int:
        return num_skipped(self.info)


def _report(metrics: dict, state: dict | None, name: str) -> None:
    if not name:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if state is not None:  # rank 0 writes; every rank reports
            write_state(state, path=Path(directory) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def _quiet_train_report_logs() -> None:
    """Train logs every report, all metrics included, at INFO on a logger named by its
    file path (outside `ray.train`, so RunConfig's LoggingConfig does not reach it); the
    epoch line says the same in one line."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray version without that module: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict) -> None:
    config: Config = loop_config["config"]
    # DDP warns once per 1x1 conv: on CPU their weight grads come out in an equivalent
    # but differently-strided layout. Harmless (one copy into the bucket), so keep the
    # progress output readable.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    _quiet_train_report_logs()
    torch.set_num_threads(config.trainer.torch_threads or max(1, int(config.trainer.cpus_per_worker)))
    worker_start = time.time()
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # The checkpoint Ray Train restores (after a failure or resize), else resume_from.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.trainer.resume_from:
        checkpoint = ray.train.Checkpoint(config.trainer.resume_from)
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory) / CHECKPOINT_FILE, map_location=device)
    info = loop_config["info"]
    if loop_config["preprocess_in_workers"]:
        feed = MemoryFeed(info.in_memory, info, rank=rank, world_size=world_size, device=device,
                          local_seed=lambda epoch: derived_seed(config.trainer.seed, epoch, rank))
    else:
        feed = RayFeed(info, config=config, rank=rank, world_size=world_size, device=device)
    trainer = Trainer(config, rank=rank, world_size=world_size, device=device, data=feed,
                      checkpoint=state, run_dir=loop_config["run_dir"])
    trainer.startup["worker_start"] = worker_start
    if state is not None and rank == 0:
        print(f"[raylars] resumed from {checkpoint.path} at epoch {trainer.state.epoch}, "
              f"global step {trainer.state.global_step}, with {world_size} workers", flush=True)
    trainer.fit(_report)
