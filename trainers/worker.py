"""The per-rank trainer: one rank's model, optimizer, precision, gradient sync and state,
and the epochs of steps, evaluation and metrics it runs.

It does not read Ray. It is given its rank, the world size, its device, a `DataFeed` (its
batches), an optional checkpoint state and a `report` callback; the Ray Train loop
(job/loop.py) is a thin adapter that supplies them, and tests and benchmarks drive the same
`Trainer.step` on their own process groups.

Determinism: the model init comes from `trainer.seed`; the data order and augmentation of
epoch e on rank r come from (seed, e, r) only (the feed's job), so two runs with the same
seed and world size see the same batches, and a resumed run continues exactly where it
stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from comms.registry import build_grad_sync
from ingest.order import StepSlices
from trainers.batching import (
    loss_weight,
    nominal_steps_per_epoch,
    rank_batch_sizes,
    steps_per_epoch,
)
from trainers.config import TrainingConfig
from trainers.faults import FaultInjector
from trainers.models import build_model
from trainers.optim import build_optimizer, set_lr
from trainers.precision import Precision
from trainers.progress import Progress
from trainers.resume import ProgressMark, SampleRecord, last_progress, resume_record
from trainers.schedule import WarmupPolySchedule
from trainers.speed import (
    configure_for_speed,
    model_input,
    normalization_constants,
    resolve_channels_last,
)


class DataFeed(Protocol):
    """One rank's data: what the model needs to know of it, and its batches (dicts of
    uint8 `image` (N, C, H, W) on the rank's device, int64 `label` and `id`)."""

    name: str  # where the preprocessing runs, for the summary
    num_classes: int
    in_channels: int
    num_train: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    # True: the feed trains ingest/order.py's steps (step s of an epoch is positions
    # [s * G, (s + 1) * G) of its sequence, whatever the world size), so a resume at any
    # world size continues exactly; steps per epoch are then num_train // G.
    step_aligned: bool

    def train_batches(self, *, epoch: int, slices: StepSlices, first_step: int,
                      num_steps: int) -> Iterable[dict]:
        """This rank's batches (its `slices` share) of steps [first_step, num_steps) of
        epoch `epoch`, one per step; every rank's iterator is read to the end."""
        ...

    def val_batches(self, *, batch_size: int) -> Iterable[dict]: ...

    def num_skipped(self) -> int:
        """Distinct samples the pipeline dropped as undecodable so far."""
        ...


# report(metrics, state, name): state is the checkpoint to save as `name`, or None.
Report = Callable[[dict, "dict | None", str], None]


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    train_images: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    resumed_from_steps: list = field(default_factory=list)
    # Mid-epoch position: optimizer steps of epoch `epoch` already trained (the data
    # position is epoch_step * global batch: ingest/order.py), and the loss of the
    # epoch's finished segments (global mean loss per step, summed), identical on all
    # ranks, so a resume finishes the epoch's train_loss as if uninterrupted.
    epoch_step: int = 0
    epoch_loss: float = 0.0
    # One record per resume: where it continued and the work lost (trainers/worker.py).
    resumes: list = field(default_factory=list)
    # The step lines' records (trainers/progress.py), kept across restarts.
    step_log: list = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainingConfig, *, rank: int, world_size: int,
                 device: torch.device, data: DataFeed, checkpoint: dict | None = None,
                 run_dir: str | None = None):
        self.config, self.data, self.run_dir = config, data, run_dir
        self.rank, self.world_size, self.device = rank, world_size, device
        trainer = config.trainer
        torch.manual_seed(trainer.seed)
        self.precision = Precision(config.precision, device_type=device.type)
        self.channels_last = resolve_channels_last(trainer.channels_last, device=device)
        self.model = self._build_model(data)
        self.optimizer = build_optimizer(config.optim, model=self.model,
                                         upcast=self.precision.upcast_update)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
        # The global batch stays trainer.global_batch_size whatever the world size (a
        # resized group included); see trainers/batching.py for the rule when it does not divide.
        batch = {"global_batch_size": trainer.global_batch_size, "world_size": world_size}
        self.slices = StepSlices(**batch, rank=rank)  # this rank's share of every step
        self.batch_size = rank_batch_sizes(**batch)[rank]
        self.loss_weight = loss_weight(**batch, rank=rank)
        nominal = nominal_steps_per_epoch(num_train=data.num_train,
                                          global_batch_size=trainer.global_batch_size,
                                          max_steps=trainer.max_steps_per_epoch)
        self.steps_per_epoch = nominal if getattr(data, "step_aligned", False) else (
            steps_per_epoch(num_train=data.num_train, **batch,
                            max_steps=trainer.max_steps_per_epoch))
        # The schedule follows the global step on a world-independent epoch length.
        self.schedule = WarmupPolySchedule.from_config(config.optim, epochs=trainer.epochs,
                                                       steps_per_epoch=nominal)
        # Rank 0's last finished step (work lost on a resume); sample ids per segment.
        self.progress_mark = ProgressMark(run_dir=run_dir, rank=rank)
        self.faults = FaultInjector(config.debug, rank=rank, run_dir=run_dir,
                                    before_crash=self.progress_mark.flush)
        self.samples = SampleRecord(run_dir=run_dir, rank=rank,
                                    enabled=config.data.record_sample_ids)
        self._last_checkpoint: str | None = None  # the name of the last one reported
        self._preempted, self._saved_for_notice = None, False
        # Wall-clock stamps (time.time()) of this group's start-up, for the summary: the
        # adapter sets "worker_start"; the first epoch adds "first_batch", "first_step".
        self.startup: dict[str, float] = {}
        self.state = TrainState()
        if checkpoint is not None:
            self._load(checkpoint)
        elif last_progress(run_dir) is not None:
            # A group restarted before the run's first checkpoint: a resume from step 0.
            self.state.resumes.append(resume_record(
                global_step=0, epoch=0, epoch_step=0, world_size=world_size,
                global_batch_size=trainer.global_batch_size, run_dir=run_dir))
        # Wrap after restoring, so the sync broadcasts the restored weights from rank 0.
        self.sync = build_grad_sync(config.comms, world_size=world_size, device=device)
        self.train_model = self.sync.wrap(self.model)
        self.scale, self.shift = normalization_constants(data.mean, data.std, device=device)
        self.progress = Progress(
            state=self.state, config=trainer, steps_per_epoch=self.steps_per_epoch, rank=rank,
            device=device, all_reduce_sum=self.sync.all_reduce_sum, lr_at=self.schedule,
            loss_scale=lambda: self.precision.loss_scale, run_dir=run_dir)

    def _build_model(self, data: DataFeed) -> torch.nn.Module:
        """The model, on the device in its precision, set up for speed (cuDNN autotuning
        and TF32 on CUDA, channels_last, torch.compile): before the optimizer state and the
        sync's buffers are made from its parameters."""
        config = self.config
        model = self.precision.prepare(build_model(
            name=config.model.name, num_classes=data.num_classes,
            in_channels=data.in_channels, image_size=config.data.image_size).to(self.device))
        return configure_for_speed(model, device=self.device, channels_last=self.channels_last,
                                   compile=config.trainer.compile)

    # ---- one step ------------------------------------------------------------------
    def inputs(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's normalised input in one pass, written directly in
        the dtype the first layer computes in and in the model's memory format."""
        return model_input(images_u8, scale=self.scale, shift=self.shift,
                           dtype=self.precision.input_dtype, channels_last=self.channels_last)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch, in micro-batches of at most
        `trainer.micro_batch_size`; returns the (weighted) loss, detached."""
        self.faults.at("step", global_step=self.state.global_step, epoch=self.state.epoch,
                       previous=self._last_checkpoint)
        set_lr(self.optimizer, self.schedule(self.state.global_step))
        # Zero in place rather than set to None: the fused syncs keep each .grad as a
        # view into its persistent flat buffer (no allocation or copy per step).
        self.optimizer.zero_grad(set_to_none=False)
        parts = _micro_batches(len(labels), self.config.trainer.micro_batch_size)
        total = torch.zeros((), device=labels.device)
        for index, part in enumerate(parts):
            # Only the last pass communicates: the others accumulate into .grad locally.
            last = index == len(parts) - 1
            with contextlib.nullcontext() if last else self.sync.no_sync():
                with self.precision.autocast():
                    # The loss in fp32 whatever the logits' dtype (fp16_pure's are fp16);
                    # each pass weighted by its share, so the sum is the batch's mean.
                    share = (part.stop - part.start) / len(labels)
                    loss = self.loss_fn(self.train_model(images[part]).float(), labels[part])
                    loss = loss * (self.loss_weight * share)
                self.precision.backward(loss)
            total += loss.detach().float()
        self.sync.finish()
        self.precision.step(self.optimizer)
        self.state.global_step += 1
        return total

    # ---- epochs --------------------------------------------------------------------
    def fit(self, report: Report, *, preempted: Callable[[], bool] | None = None) -> None:
        """Train the remaining epochs; `report` gets each epoch's metrics (and the
        checkpoint state when one is due). `preempted()`, called on every rank together
        every `trainer.preemption_check_steps` steps, says whether a node of the group is
        about to go (a checkpoint is then written at once). Closes the sync when it ends,
        failure included."""
        self._preempted, self._saved_for_notice = preempted, False
        try:
            if self.state.epoch >= self.config.trainer.epochs:
                # Restored from a run that had already finished: report its final metrics
                # again so the summary describes it.
                report(self.metrics(), None, "")
                return
            for epoch in range(self.state.epoch, self.config.trainer.epochs):
                self._run_epoch(epoch, report)
        finally:
            self.close()

    def _run_epoch(self, epoch: int, report: Report) -> None:
        stats = self.train_epoch(epoch, report=report)
        steps = torch.tensor([stats["steps"], self.batch_size], dtype=torch.float64,
                             device=self.device)
        totals = self.sync.all_reduce_sum(torch.cat([
            stats["loss_sum"].double().reshape(1), steps, self.evaluate()])).tolist()
        # The epoch's loss: its earlier segments (mid-epoch checkpoints, a resume) plus
        # this one, as the global mean loss per step (a rank's weighted loss sums to
        # world x the global mean over the ranks).
        train_loss = (self.state.epoch_loss + totals[0] / self.world_size) / self.steps_per_epoch
        _check_finite(train_loss, epoch=epoch, step=self.state.global_step)
        self._finish_epoch(epoch, stats=stats, totals=totals, train_loss=train_loss)
        trainer = self.config.trainer
        if not (self.state.epoch == trainer.epochs
                or self.state.epoch % trainer.checkpoint_every_epochs == 0):
            report(self.metrics(), None, "")
            return
        name = f"checkpoint_epoch_{self.state.epoch:04d}"
        state = self.checkpoint_state() if self.rank == 0 else None
        before = (self.state.epoch - 1) // trainer.checkpoint_every_epochs * trainer.checkpoint_every_epochs
        self.faults.at("checkpoint", global_step=self.state.global_step,
                       epoch=self.state.epoch, state=state, name=name,
                       previous=f"checkpoint_epoch_{before:04d}" if before else None)
        report(self.metrics(), state, name)
        self._last_checkpoint = name

    def train_epoch(self, epoch: int, *, report: Report | None = None) -> dict:
        """Steps [state.epoch_step, steps_per_epoch) of `epoch` (a resumed epoch starts
        where its checkpoint left it); mid-epoch checkpoints go to `report`."""
        self.train_model.train()
        first = self.state.epoch_step
        self.samples.start(first_step=first)
        loss_sum = torch.zeros((), device=self.device)
        start = time.perf_counter()
        for batch in self.data.train_batches(epoch=epoch, slices=self.slices, first_step=first,
                                             num_steps=self.steps_per_epoch):
            self.startup.setdefault("first_batch", time.time())
            loss = self.step(self.inputs(batch["image"]), batch["label"])
            loss_sum += loss
            self.progress.after_step(loss, epoch=epoch)
            # On CUDA the step is queued, not done: a start-up figure, not a step time.
            self.startup.setdefault("first_step", time.time())
            self.samples.add(batch["id"])
            self.state.epoch_step += 1
            self.progress_mark.step_done(self.state.global_step)
            reason = self._checkpoint_due() if report is not None else None
            # A notice at the epoch's last step checkpoints before the evaluation: the
            # node may be gone before the epoch-end checkpoint.
            if reason == "preemption" or (reason and self.state.epoch_step < self.steps_per_epoch):
                loss_sum = self._checkpoint_mid_epoch(epoch, loss_sum=loss_sum, report=report,
                                                      reason=reason)
        assert self.state.epoch_step == self.steps_per_epoch, (self.state.epoch_step,
                                                               self.steps_per_epoch)
        self.samples.write(epoch=epoch, next_step=self.state.epoch_step)
        return {"loss_sum": loss_sum, "steps": self.state.epoch_step - first,
                "seconds": time.perf_counter() - start}

    def _checkpoint_due(self) -> str | None:
        """"step" (trainer.checkpoint_every_steps), "preemption" (a notice, once), or None.
        The same on every rank: it follows the global step, and Ray Train agrees one
        preemption answer for all ranks."""
        trainer, step = self.config.trainer, self.state.global_step
        due = None
        if trainer.checkpoint_every_steps and step % trainer.checkpoint_every_steps == 0:
            due = "step"
        check = trainer.preemption_check_steps
        if self._preempted is not None and check and step % check == 0 and not self._saved_for_notice:
            if self._preempted():
                self._saved_for_notice = True
                due = "preemption"
        return due

    def _checkpoint_mid_epoch(self, epoch: int, *, loss_sum: torch.Tensor, report: Report,
                              reason: str) -> torch.Tensor:
        """Close the epoch's loss segment (all ranks), write the checkpoint of this exact
        step (rank 0), report it (all ranks). Returns the next segment's accumulator."""
        total = self.sync.all_reduce_sum(loss_sum.double().reshape(1)).item()
        self.state.epoch_loss += total / self.world_size
        state = self.state
        self.samples.write(epoch=epoch, next_step=state.epoch_step)
        position = state.epoch_step * self.config.trainer.global_batch_size
        name = f"checkpoint_step_{state.global_step:08d}"
        metrics = {**(self.metrics() if state.history else {}),
                   "global_step": state.global_step, "resume_epoch": epoch,
                   "epoch_step": state.epoch_step, "sample_position": position,
                   "checkpoint_reason": reason}
        if self.rank == 0:
            print(f"[raylars] checkpoint ({reason}) at global step {state.global_step}: "
                  f"epoch {epoch + 1}, step {state.epoch_step}/{self.steps_per_epoch}, "
                  f"sample position {position}", flush=True)
        report(metrics, self.checkpoint_state() if self.rank == 0 else None, name)
        self._last_checkpoint = name
        return torch.zeros((), device=self.device)

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        """[top-1 correct, top-5 correct, samples, summed loss] of this rank's share of the
        val set, on the device (summed over ranks with the epoch's other totals, one host
        sync). The loss is plain cross-entropy (no label smoothing), summed over samples."""
        # BN statistics are made consistent here (every rank takes rank 0's), not before
        # each forward; the checkpoint written after evaluation sees the same ones.
        self.sync.sync_buffers(self.model)
        self.model.eval()
        counts = torch.zeros(4, dtype=torch.float64, device=self.device)
        k = min(5, self.data.num_classes)
        for batch in self.data.val_batches(batch_size=self.config.trainer.eval_batch_size):
            with self.precision.autocast():
                logits = self.model(self.inputs(batch["image"]))
            hits = logits.topk(k, dim=1).indices == batch["label"][:, None]
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"],
                                                     reduction="sum")
            counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(),
                                   torch.tensor(len(hits), device=self.device),
                                   loss.double()])
        return counts

    def _finish_epoch(self, epoch: int, *, stats: dict, totals: list,
                      train_loss: float) -> None:
        state, trainer = self.state, self.config.trainer
        # batch_total: the samples per optimizer step summed over the ranks, as trained.
        # (The train loss comes in segments: `train_loss`, from _run_epoch.)
        _, _, batch_total, top1, top5, val_samples, val_loss_sum = totals
        images = stats["steps"] * trainer.global_batch_size
        state.epoch, state.epoch_step, state.epoch_loss = epoch + 1, 0, 0.0
        state.train_images += images
        state.train_seconds += stats["seconds"]
        nodes = len(self.sync.describe().get("topology", {}).get("nodes", []))
        record = {
            "epoch": state.epoch, "global_step": state.global_step,
            "train_loss": train_loss, "val_top1": top1 / val_samples,
            "val_top5": top5 / val_samples, "val_samples": int(val_samples),
            "val_loss": val_loss_sum / val_samples,
            "epoch_images_per_sec": images / stats["seconds"],
            "lr": self.schedule(state.global_step - 1),
            "loss_scale": self.precision.loss_scale,
            "skipped_steps": self.precision.skipped_steps, "world_size": self.world_size,
            "global_batch_size": int(batch_total),
            # Nodes of this group's comms topology (fused/hierarchical; rebuilt every start).
            "comms_nodes": nodes or None,
            "skipped_samples": self.data.num_skipped(),
        }
        state.history.append(record)
        self.progress.end_epoch(record)
        if self.rank == 0:
            print(f"[raylars] epoch {state.epoch}/{trainer.epochs} step {state.global_step} "
                  f"loss {record['train_loss']:.4f} val_top1 {record['val_top1']:.4f} "
                  f"img/s {record['epoch_images_per_sec']:.0f} lr {record['lr']:.4g} "
                  f"loss_scale {record['loss_scale']:g} skipped {record['skipped_steps']} "
                  f"workers {self.world_size}", flush=True)

    def metrics(self) -> dict:
        """The last epoch's record, plus what the run summary needs."""
        state = self.state
        return {**state.history[-1], "history": state.history,
                "steps_per_epoch": self.steps_per_epoch,
                "images_per_sec": state.train_images / state.train_seconds,
                "resumed_from_steps": state.resumed_from_steps, "resumes": state.resumes,
                "comms": self.sync.describe(),
                "startup": self.startup, "data_feed": self.data.name,
                "step_log": state.step_log}

    # ---- checkpoints and shutdown ---------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "train_state": asdict(self.state),
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            # The resolved config as plain data, so the model can be rebuilt from the
            # checkpoint alone (launch/evaluate.py); loads with weights_only=True.
            "config": asdict(self.config),
        }

    def _load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.precision.load_state_dict(saved["precision"])
        self.state = TrainState(**saved["train_state"])
        state = self.state
        state.resumed_from_steps.append(state.global_step)
        state.resumes.append(resume_record(
            global_step=state.global_step, epoch=state.epoch, epoch_step=state.epoch_step,
            world_size=self.world_size, global_batch_size=self.config.trainer.global_batch_size,
            run_dir=self.run_dir))

    def close(self) -> None:
        self.sync.close()
        self.progress.close()
        self.progress_mark.close()


def _micro_batches(size: int, micro: int | None) -> list[slice]:
    """Slices of a batch of `size` in passes of at most `micro` (None: one pass)."""
    micro = micro or size
    return [slice(start, min(start + micro, size)) for start in range(0, size, micro)]


def _check_finite(train_loss: float, *, epoch: int, step: int) -> None:
    # Every rank sees the same all-reduced loss, so all stop together (no rank left
    # waiting in a collective). A diverged run stops here instead of burning its budget;
    # in a sweep the trial is recorded as failed and the others go on.
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"train loss is {train_loss} in epoch {epoch + 1} (by global step {step}): "
            "training diverged; lower optim.lr or lengthen optim.warmup_epochs")
