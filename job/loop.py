"""The train_loop_per_worker every Ray Train worker runs: a thin adapter that reads Ray's
context (rank, world size, device, dataset shards, the checkpoint to resume) and hands
them to the per-rank trainer (trainers/worker.py), whose epoch reports it turns into
`ray.train.report` calls with checkpoints."""

from __future__ import annotations

import functools
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
from ingest.order import StepSlices, batches_by_step
from job.config import Config
from job.watchdog import watched
from trainers.checkpoint import CHECKPOINT_FILE, load_state, write_state
from trainers.worker import Trainer


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class RayFeed:
    """A rank's `trainers.worker.DataFeed` over Ray Data: its share of every step of the
    train split (ingest/order.py; synthetic data: a streaming shard shuffled locally with
    a (seed, epoch, rank) seed) and its slice of the val split (each val sample is in
    exactly one rank's slice; ingest/sharding.py)."""

    name = "tasks"  # where the preprocessing runs (summary.json's `data_feed`)

    def __init__(self, info: DatasetInfo, *, config: Config, rank: int, world_size: int,
                 device: torch.device):
        self.info, self.config, self.rank, self.device = info, config, rank, device
        self.world_size = world_size
        self.num_classes, self.in_channels = info.num_classes, info.in_channels
        self.num_train, self.mean, self.std = info.num_train, info.mean, info.std
        self.shard_rows = info.num_train // world_size
        self.train = ray.train.get_dataset_shard("train")
        # Pipeline formats run ingest/order.py's steps (exact mid-epoch resume).
        self.step_aligned = bool(info.recipes) and "train" in info.recipes
        self.val = ray.train.get_dataset_shard("val")

    def train_batches(self, *, epoch: int, slices: StepSlices, first_step: int,
                      num_steps: int):
        # The preprocessing (Ray Data tasks) derives this epoch's sample order and
        # augmentation from it, and skips the steps a resumed epoch already trained.
        announce_epoch(self.info, epoch=epoch, first_step=first_step)
        data, what = self.config.data, f"train epoch {epoch + 1}"
        if self.step_aligned:
            # Rows carry their step (ingest/order.py); regrouped on the host, so a batch
            # is one step's rows whatever the stream's boundaries (a skipped sample).
            rows = self.train.iter_torch_batches(
                batch_size=slices.size, prefetch_batches=data.prefetch_batches, device="cpu")
            steps = batches_by_step(watched(rows, timeout_s=data.stall_timeout_s, what=what),
                                    first_step=first_step, num_steps=num_steps)
            cuda = self.device.type == "cuda"
            for batch in steps:
                yield {key: (value.pin_memory() if cuda else value).to(self.device,
                                                                        non_blocking=True)
                       for key, value in batch.items()}
            return
        # Generated data (synthetic), split by Ray: no global order to resume in, so a
        # resumed epoch skips as many batches; the whole shard is read (streaming splits
        # finish an epoch together).
        batches = self.train.iter_torch_batches(
            batch_size=slices.size, drop_last=True, prefetch_batches=data.prefetch_batches,
            local_shuffle_buffer_size=max(slices.size, min(self.shard_rows, data.local_shuffle_rows)),
            local_shuffle_seed=derived_seed(self.config.trainer.seed, epoch, self.rank),
            device=self.device, pin_memory=self.device.type == "cuda")
        for index, batch in enumerate(watched(batches, timeout_s=data.stall_timeout_s, what=what)):
            if first_step <= index < num_steps:
                yield batch

    def val_batches(self, *, batch_size: int):
        """This rank's slice of the val split: only its own samples are decoded."""
        batches = self.val.iter_torch_batches(batch_size=batch_size, device=self.device,
                                              prefetch_batches=self.config.data.prefetch_batches)
        return watched(batches, timeout_s=self.config.data.stall_timeout_s, what="validation")

    def num_skipped(self) -> int:
        return num_skipped(self.info)


def _report(metrics: dict, state: dict | None, name: str, *, upload: str = "async") -> None:
    """Report `metrics`, with `state` as checkpoint `name` when given (rank 0 writes;
    every rank reports). `upload` (trainer.checkpoint_upload): `sync` returns once Ray
    has copied the checkpoint into the run directory; `async` once it is written to a
    local folder, which Ray copies in a background thread and then deletes. Either way
    Ray registers it, and a restart can restore it, only after the whole copy. A
    preemption's checkpoint is always copied before this returns: the node has a
    deadline, and a background copy would wait its turn behind the training steps."""
    from ray.train import CheckpointUploadMode

    if not name:
        ray.train.report(metrics)
        return
    sync = upload == "sync" or metrics.get("checkpoint_reason") == "preemption"
    mode = CheckpointUploadMode.SYNC if sync else CheckpointUploadMode.ASYNC
    if state is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name,
                         checkpoint_upload_mode=mode)
        return
    if mode is CheckpointUploadMode.ASYNC:
        # Outlives this call: Ray deletes it after the upload (its ASYNC default).
        directory = tempfile.mkdtemp(prefix="raylars-checkpoint-")
        write_state(state, path=Path(directory) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=name, checkpoint_upload_mode=mode)
        return
    with tempfile.TemporaryDirectory(prefix="raylars-checkpoint-") as directory:
        write_state(state, path=Path(directory) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=name, checkpoint_upload_mode=mode)


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
        feed = MemoryFeed(info.in_memory, info, rank=rank, world_size=world_size, device=device)
    else:
        feed = RayFeed(info, config=config, rank=rank, world_size=world_size, device=device)
    trainer = Trainer(config, rank=rank, world_size=world_size, device=device, data=feed,
                      checkpoint=state, run_dir=loop_config["run_dir"])
    trainer.startup["worker_start"] = worker_start
    if state is not None and rank == 0:
        print(f"[raylars] resumed from {checkpoint.path} at epoch {trainer.state.epoch}, "
              f"global step {trainer.state.global_step}, with {world_size} workers", flush=True)
    trainer.fit(functools.partial(_report, upload=config.trainer.checkpoint_upload),
                preempted=_preemption_notice)


def _preemption_notice() -> bool:
    """Whether Ray Train has a preemption notice for a node of this group (a barrier:
    every rank calls it at the same step, trainers/worker.py)."""
    return ray.train.get_preemption_info() is not None
