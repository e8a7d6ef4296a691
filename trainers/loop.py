"""The train_loop_per_worker run by every Ray Train worker: epochs of steps over the Ray
Data shard, evaluation, metrics, checkpoints, and exact resume.

Determinism: the model init comes from `trainer.seed`; the data order and augmentation of
epoch e on rank r come from (seed, e, r) only, so two runs with the same seed and world
size see the same batches, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from comms import build_grad_sync
from ingest import DatasetInfo, announce_epoch, num_skipped
from ingest.batches import normalize
from launch.config import Config
from trainers.checkpoint import crash_while_writing, load_state, write_state
from trainers.elastic import loss_weight, nominal_steps_per_epoch, rank_batch_sizes, steps_per_epoch
from trainers.models import build_model
from trainers.optim import build_optimizer, set_lr
from trainers.precision import Precision
from trainers.schedule import WarmupPolySchedule

CHECKPOINT_FILE = "state.pt"


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    train_images: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    resumed_from_steps: list = field(default_factory=list)


class Worker:
    """One rank's model, optimizer, precision, comms and state."""

    def __init__(self, config: Config, info: DatasetInfo):
        ctx = ray.train.get_context()
        self.config, self.info = config, info
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(config.trainer.seed)
        self.precision = Precision(config.precision, device_type=self.device.type)
        self.model = self.precision.prepare(build_model(
            name=config.model.name, num_classes=info.num_classes,
            in_channels=info.in_channels).to(self.device))
        self.optimizer = build_optimizer(config.optim, model=self.model,
                                         upcast=self.precision.upcast_update)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
        # The global batch stays trainer.global_batch_size whatever the world size (a
        # resized group included); see trainers/elastic.py for the rule when it does not divide.
        batch = {"global_batch_size": config.trainer.global_batch_size,
                 "world_size": self.world_size}
        self.batch_size = rank_batch_sizes(**batch)[self.rank]
        self.loss_weight = loss_weight(**batch, rank=self.rank)
        self.steps_per_epoch = steps_per_epoch(
            num_train=info.num_train, **batch, max_steps=config.trainer.max_steps_per_epoch)
        # The schedule follows the global step on a world-independent epoch length.
        self.schedule = WarmupPolySchedule.from_epochs(
            base_lr=config.optim.lr, end_lr=config.optim.end_lr,
            warmup_epochs=config.optim.warmup_epochs, epochs=config.trainer.epochs,
            steps_per_epoch=nominal_steps_per_epoch(
                num_train=info.num_train, global_batch_size=config.trainer.global_batch_size,
                max_steps=config.trainer.max_steps_per_epoch),
            power=config.optim.poly_power)
        self.state = TrainState()
        self._restore()
        # Wrap after restoring, so DDP broadcasts the restored weights from rank 0.
        self.sync = build_grad_sync(config.comms, world_size=self.world_size, device=self.device)
        self.train_model = self.sync.wrap(self.model)
        shape = (1, info.in_channels, 1, 1)
        self.mean = torch.tensor(info.mean, device=self.device).view(shape)
        self.std = torch.tensor(info.std, device=self.device).view(shape)

    def _restore(self) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.config.trainer.resume_from:
            checkpoint = ray.train.Checkpoint(self.config.trainer.resume_from)
        if checkpoint is None:
            return
        with checkpoint.as_directory() as directory:
            saved = load_state(Path(directory) / CHECKPOINT_FILE, map_location=self.device)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.precision.load_state_dict(saved["precision"])
        self.state = TrainState(**saved["train_state"])
        self.state.resumed_from_steps.append(self.state.global_step)
        if self.rank == 0:
            print(f"[raylars] resumed from {checkpoint.path} at epoch {self.state.epoch}, "
                  f"global step {self.state.global_step}, with {self.world_size} workers",
                  flush=True)

    def _batches(self, shard, *, epoch: int):
        """Per-worker batches of the shard, shuffled locally with a (seed, epoch, rank) seed."""
        trainer = self.config.trainer
        per_worker = self.batch_size
        shard_rows = self.info.num_train // self.world_size
        return shard.iter_torch_batches(
            batch_size=per_worker, drop_last=True,
            prefetch_batches=self.config.data.prefetch_batches,
            local_shuffle_buffer_size=max(per_worker, min(shard_rows,
                                                          self.config.data.local_shuffle_rows)),
            local_shuffle_seed=derived_seed(trainer.seed, epoch, self.rank),
            device=self.device, pin_memory=self.device.type == "cuda")

    def _maybe_inject_fault(self, run_dir: str) -> None:
        marker = Path(run_dir) / ".fault_injected"
        if (self.rank == 0 and self.state.global_step == self.config.trainer.fail_at_step
                and not marker.exists()):
            marker.touch()
            raise RuntimeError(
                f"fault injected before global step {self.state.global_step} "
                "(trainer.fail_at_step)")

    def train_epoch(self, shard, *, epoch: int, run_dir: str) -> dict:
        self.train_model.train()
        # The preprocessing (Ray Data tasks) derives this epoch's sample order and
        # augmentation from it; see ingest/pipeline.py.
        announce_epoch(self.info, epoch=epoch)
        seen_ids = [] if self.config.data.record_sample_ids else None
        loss_sum = torch.zeros((), device=self.device)
        steps, seconds = 0, 0.0
        start = time.perf_counter()
        # Read the whole shard even past a max_steps cap: every worker must finish the
        # epoch's streaming split before the next one starts.
        for batch in self._batches(shard, epoch=epoch):
            if steps == self.steps_per_epoch:
                continue
            self._maybe_inject_fault(run_dir)
            images = self.precision.cast_inputs(
                normalize(batch["image"], mean=self.mean, std=self.std))
            loss_sum += self._step(images, batch["label"])
            if seen_ids is not None:
                seen_ids.append(batch["id"].cpu())
            steps += 1
            if steps == self.steps_per_epoch:
                seconds = time.perf_counter() - start
        # Undecodable samples dropped by the pipeline can leave fewer rows than planned; the
        # equal split still gives every worker the same number of steps.
        assert steps == self.steps_per_epoch or num_skipped(self.info), (steps, self.steps_per_epoch)
        seconds = seconds or time.perf_counter() - start
        if seen_ids is not None:
            self._record_ids(seen_ids, epoch=epoch, run_dir=run_dir)
        return {"loss_sum": loss_sum, "steps": steps, "seconds": seconds}

    def _record_ids(self, seen_ids: list, *, epoch: int, run_dir: str) -> None:
        directory = Path(run_dir) / "sample_ids"
        directory.mkdir(parents=True, exist_ok=True)
        ids = torch.cat(seen_ids).numpy() if seen_ids else np.empty(0, np.int64)
        np.save(directory / f"epoch{epoch:04d}_rank{self.rank}.npy", ids)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lr = self.schedule(self.state.global_step)
        set_lr(self.optimizer, lr)
        # Zero in place rather than set to None: the gradient sync keeps each .grad as a
        # view into its persistent flat buffer (no allocation or copy per step).
        self.optimizer.zero_grad(set_to_none=False)
        with self.precision.autocast():
            # The loss in fp32 whatever the logits' dtype (fp16_pure's are fp16).
            loss = self.loss_fn(self.train_model(images).float(), labels) * self.loss_weight
        self.precision.backward(loss)
        self.sync.finish()
        self.precision.step(self.optimizer)
        self.state.global_step += 1
        return loss.detach().float()

    @torch.no_grad()
    def evaluate(self, val_iterator) -> tuple[float, float]:
        """(correct, total) of this rank's share: val batches i with i % world == rank."""
        self.model.eval()
        correct = total = 0.0
        batches = val_iterator.iter_torch_batches(
            batch_size=self.config.trainer.eval_batch_size, device=self.device,
            prefetch_batches=self.config.data.prefetch_batches)
        for index, batch in enumerate(batches):
            if index % self.world_size != self.rank:
                continue
            images = self.precision.cast_inputs(
                normalize(batch["image"], mean=self.mean, std=self.std))
            with self.precision.autocast():
                logits = self.model(images)
            correct += (logits.argmax(dim=1) == batch["label"]).sum().item()
            total += len(batch["label"])
        return correct, total

    def checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "schedule": self.schedule.state_dict(),
            "train_state": asdict(self.state),
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
        }


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
    worker = Worker(config, loop_config["info"])
    shard = ray.train.get_dataset_shard("train")
    val_iterator = ray.train.get_dataset_shard("val")
    if worker.state.epoch >= config.trainer.epochs:
        # Train V2 restored a run that had already finished (same output dir and name):
        # report its final metrics again so the summary describes it.
        ray.train.report(_metrics(worker))
        return
    for epoch in range(worker.state.epoch, config.trainer.epochs):
        stats = worker.train_epoch(shard, epoch=epoch, run_dir=loop_config["run_dir"])
        correct, total = worker.evaluate(val_iterator)
        totals = worker.sync.all_reduce_sum(torch.tensor(
            [stats["loss_sum"].item(), stats["steps"], correct, total, worker.batch_size],
            dtype=torch.float64,
            device=worker.device)).tolist()
        _check_finite(totals[0] / totals[1], epoch=epoch, step=worker.state.global_step)
        _finish_epoch(worker, epoch=epoch, stats=stats, totals=totals,
                      run_dir=loop_config["run_dir"])


def _check_finite(train_loss: float, *, epoch: int, step: int) -> None:
    # Every rank sees the same all-reduced loss, so all stop together (no rank left
    # waiting in a collective). A diverged run stops here instead of burning its budget;
    # in a sweep the trial is recorded as failed and the others go on.
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"train loss is {train_loss} in epoch {epoch + 1} (by global step {step}): "
            "training diverged; lower optim.lr or lengthen optim.warmup_epochs")


def _metrics(worker: Worker) -> dict:
    state = worker.state
    return {**state.history[-1], "history": state.history,
            "steps_per_epoch": worker.steps_per_epoch,
            "images_per_sec_mean": state.train_images / state.train_seconds,
            "resumed_from_steps": state.resumed_from_steps, "comms": worker.sync.describe()}


def _finish_epoch(worker: Worker, *, epoch: int, stats: dict, totals: list,
                  run_dir: str) -> None:
    config, state = worker.config, worker.state
    # batch_total: the samples per optimizer step summed over the ranks, as trained.
    loss_sum, step_count, correct, total, batch_total = totals
    images = stats["steps"] * config.trainer.global_batch_size
    state.epoch = epoch + 1
    state.train_images += images
    state.train_seconds += stats["seconds"]
    record = {
        "epoch": state.epoch, "global_step": state.global_step,
        "train_loss": loss_sum / step_count, "val_top1": correct / total,
        "images_per_sec": images / stats["seconds"], "lr": worker.schedule(state.global_step - 1),
        "loss_scale": worker.precision.loss_scale,
        "skipped_steps": worker.precision.skipped_steps, "world_size": worker.world_size,
        "global_batch_size": int(batch_total),
        # Nodes of this group's comms topology (fused/hierarchical; rebuilt every start).
        "comms_nodes": len(worker.sync.describe().get("topology", {}).get("nodes", [])) or None,
        "skipped_samples": num_skipped(worker.info),
    }
    state.history.append(record)
    metrics = _metrics(worker)
    if worker.rank == 0:
        print(f"[raylars] epoch {state.epoch}/{config.trainer.epochs} step {state.global_step} "
              f"loss {record['train_loss']:.4f} val_top1 {record['val_top1']:.4f} "
              f"img/s {record['images_per_sec']:.0f} lr {record['lr']:.4g} "
              f"loss_scale {record['loss_scale']:g} skipped {record['skipped_steps']} "
              f"workers {worker.world_size}", flush=True)
    last = state.epoch == config.trainer.epochs
    if not (last or state.epoch % config.trainer.checkpoint_every_epochs == 0):
        ray.train.report(metrics)
        return
    name = f"checkpoint_epoch_{state.epoch:04d}"
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if worker.rank == 0:
            _maybe_crash_in_checkpoint(worker, run_dir=run_dir, name=name)
            write_state(worker.checkpoint_state(), path=Path(directory) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def _maybe_crash_in_checkpoint(worker: Worker, *, run_dir: str, name: str) -> None:
    marker = Path(run_dir) / ".checkpoint_fault_injected"
    if worker.state.epoch == worker.config.trainer.fail_in_checkpoint_epoch and not marker.exists():
        marker.touch()
        crash_while_writing(worker.checkpoint_state(), path=Path(run_dir) / name / CHECKPOINT_FILE)
