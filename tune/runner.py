"""Runs a sweep as Ray Tune stages. Every trial is one distributed training run: the
same TorchTrainer as `launch/run.py`, started from a Tune trial function, with Train's
epoch metrics forwarded to Tune by a TuneReportCallback (the Train V2 + Tune pattern).

Stages run one after another, each a Tuner stored under `<output_dir>/<stage>`, so a
rerun with the same output directory restores finished stages instead of repeating them.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from job.restarts import read_restarts
from tune.config import SweepConfig
from tune.progress import SweepClock

METRIC = "val_top1"

# What a trial function holds. It only drives a TorchTrainer whose workers hold the real
# CPUs: Tune rejects an empty request, and a token CPU share (0.01) would leave 0.99 CPU
# on a node where Ray Data's 1-CPU tasks then never fit, so it asks for a little memory.
# And a sliver of the head node's own resource (as Ray Train pins its state actor): Train
# pins the run's controller to the node its driver, the trial function, runs on, so a
# trial on a worker node dies with that node, and a spot node's preemption would fail the
# trial instead of restarting its workers from their checkpoint elsewhere. Without it Ray
# may still place the trial on the head, but nothing makes it.
HEAD_NODE_RESOURCE = "node:__internal_head__"
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2, HEAD_NODE_RESOURCE: 0.001}


@dataclass(frozen=True)
class StagePlan:
    name: str
    # [{"lr": float, "warmup_epochs": float, "resume_from": str | None, "start_epoch": int}]:
    # a trial with resume_from continues an earlier stage's run from its checkpoint.
    trials: list
    early_stopping: bool

    def starts(self) -> dict[str, dict]:
        return {point_key(t): {"resume_from": t["resume_from"], "start_epoch": t["start_epoch"]}
                for t in self.trials}


def point_key(trial: dict) -> str:
    return f"{trial['lr']:.6g}/{trial['warmup_epochs']:g}"


class EpochResults(TuneReportCallback):
    """Forwards the trial's epoch reports to Tune and keeps its mid-epoch checkpoints
    (`trainer.checkpoint_every_steps`, a preemption notice) with Train. Each Tune result
    is one epoch (ASHA counts epochs); and one written before the first epoch ends has no
    val_top1 yet, which Tune's strict metric check turns into a failed trial. Train still
    restores its workers from those checkpoints."""

    def after_report(self, run_context, metrics, checkpoint):
        if "checkpoint_reason" not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def trial_fn(params: dict, *, base: SweepConfig, starts: dict[str, dict],
             in_workers: bool) -> None:
    """One Tune trial: train `base` with the trial's LR and warmup on Ray Train, from the
    checkpoint an earlier stage left at this point if there is one."""
    import ray.tune

    from ingest import build_datasets
    from job.trainer import build_trainer

    config = copy.deepcopy(base)
    config.optim.lr = float(params["trial"]["lr"])
    config.optim.warmup_epochs = float(params["trial"]["warmup_epochs"])
    config.trainer.resume_from = starts[point_key(params["trial"])]["resume_from"]
    config.run.name = "train"
    if config.trainer.log_every_steps is None:
        # Trials run side by side: their epoch lines and the sweep's trial lines suffice.
        config.trainer.log_every_steps = 0
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    datasets, info = build_datasets(config.data, seed=config.trainer.seed,
                                    in_workers=in_workers)
    trainer = build_trainer(config, datasets=datasets, info=info, run_dir=trial_dir / "train",
                            callbacks=[EpochResults()])
    trainer.fit()


def concurrent_trials(config: SweepConfig) -> int:
    """`tune.max_concurrent_trials`, or (null) the trials the cluster's resources hold:
    more would wait for workers and may time out starting their group
    (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S)."""
    import ray

    if config.tune.max_concurrent_trials:
        return config.tune.max_concurrent_trials
    trainer = config.trainer
    return trials_that_fit(ray.cluster_resources(), num_workers=trainer.max_world_size,
                           cpus_per_worker=trainer.cpus_per_worker, use_gpu=trainer.use_gpu,
                           worker_resources=trainer.worker_resources)


def trial_resources(*, num_workers: int, cpus_per_worker: float, use_gpu: bool,
                    worker_resources: dict[str, float]) -> dict[str, float]:
    """What one trial holds: each worker's CPUs, GPU and extra resources, plus one CPU for
    its Ray Data tasks (so preprocessing can always run beside the workers)."""
    need = {"CPU": num_workers * cpus_per_worker + 1}
    if use_gpu:
        need["GPU"] = num_workers  # one GPU per worker (Ray Train's use_gpu)
    for name, amount in worker_resources.items():
        need[name] = need.get(name, 0) + num_workers * amount
    return need


def trials_that_fit(cluster: dict[str, float], **trial) -> int:
    """min over the resources a trial needs of floor(cluster total / per-trial need), at
    least 1 (a trial that does not fit at all still starts, and waits for nodes).
    `cluster` is ray.cluster_resources(); `trial` the keywords of `trial_resources`."""
    need = trial_resources(**trial)
    # The tolerance absorbs float sums such as 3 x 0.1 CPUs.
    fits = (math.floor(cluster.get(name, 0.0) / amount + 1e-9)
            for name, amount in need.items() if amount > 0)
    return max(1, min(fits))


def run_stage(plan: StagePlan, *, config: SweepConfig, storage: Path,
              clock: SweepClock | None = None) -> list[dict]:
    """Run (or restore) one stage; return one record per trial. `clock` counts the
    finished trials and says the time left on each trial's line."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from job.trainer import preprocess_in_workers

    starts = plan.starts()
    # Decided here, on the driver, which knows the embedded cluster's real CPUs.
    trainable = tune.with_parameters(trial_fn, base=config, starts=starts,
                                     in_workers=preprocess_in_workers(config))
    trainable = tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES)
    path = storage / plan.name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable)
    else:
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=config.trainer.epochs,
            grace_period=config.tune.asha_grace_epochs,
            reduction_factor=config.tune.asha_reduction_factor,
        ) if plan.early_stopping else None
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(
                [{"lr": t["lr"], "warmup_epochs": t["warmup_epochs"]} for t in plan.trials])},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                        max_concurrent_trials=concurrent_trials(config)),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=str(storage), verbose=0,
                callbacks=[TrialProgress(stage=plan.name, epochs=config.trainer.epochs,
                                         starts=starts, clock=clock)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
        )
    results = tuner.fit()
    return [trial_record(result, epochs=config.trainer.epochs, starts=starts) for result in results]


def trial_params(result) -> dict:
    # A restored experiment's results may come back without their config; every trial
    # directory keeps it in params.json.
    if result.config:
        return result.config["trial"]
    return json.loads((Path(result.path) / "params.json").read_text())["trial"]


def trial_record(result, *, epochs: int, starts: dict[str, dict]) -> dict:
    params = trial_params(result)
    start = starts[point_key(params)]
    metrics = result.metrics or {}
    # The last reported epoch; a trial that failed before reporting stays where it began.
    epochs_run = int(metrics.get("epoch", start["start_epoch"]))
    value = metrics.get(METRIC)
    return {
        "lr": params["lr"], "warmup_epochs": params["warmup_epochs"],
        METRIC: value if value is not None and math.isfinite(value) else None,
        "epochs_run": epochs_run, "start_epoch": start["start_epoch"],
        "resumed_from": start["resume_from"],
        "stopped_early": result.error is None and epochs_run < epochs,
        "error": _error_line(result.error) if result.error is not None else None,
        # Where a later stage can continue this run (TuneReportCallback forwards the path).
        "checkpoint": metrics.get(CHECKPOINT_PATH_KEY),
        # Why Train restarted the trial's worker group, if it did (failure, preemption).
        "restarts": [event["reason"] for event in
                     read_restarts(Path(result.path) / "train")["restart_events"]
                     if event["reason"] != "start"],
    }


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Train wraps the worker's exception; its last line names the cause.
    return (text[-1] if text else type(error).__name__)[:300]


def _progress_line(*, stage: str, params: dict, value, epoch: int, epochs: int,
                   status: str) -> str:
    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
    return (f"[raylars tune] {stage}: lr={params['lr']:.4g} warmup={params['warmup_epochs']:g} "
            f"{METRIC}={shown} epochs={epoch}/{epochs} {status}")


class TrialProgress(Callback):
    """One line per finished trial: stage, lr, warmup, val_top1, epochs, early stop, and
    (with a clock) the sweep's trials done and time left."""

    def __init__(self, *, stage: str, epochs: int, starts: dict[str, dict],
                 clock: SweepClock | None = None):
        self.stage, self.epochs, self.starts, self.clock = stage, epochs, starts, clock

    def _line(self, trial, status: str) -> None:
        params = trial.config["trial"]
        result = trial.last_result or {}
        start_epoch = self.starts[point_key(params)]["start_epoch"]
        if start_epoch:
            status += f", continued from epoch {start_epoch}"
        if self.clock is not None:
            self.clock.trial_done(stage=self.stage,
                                  epochs=max(0, result.get("epoch", start_epoch) - start_epoch))
            status += f"; {self.clock.status()}"
        print(_progress_line(stage=self.stage, params=params, value=result.get(METRIC),
                             epoch=result.get("epoch", start_epoch), epochs=self.epochs,
                             status=status), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        stopped = (trial.last_result or {}).get("epoch", 0) < self.epochs
        self._line(trial, "stopped early (ASHA)" if stopped else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")


def print_reused(records: list[dict], *, stage: str, epochs: int) -> None:
    """The progress line of each trial a stage takes over from an earlier one."""
    for record in records:
        status = "FAILED before, not rerun" if record["error"] else "reused, already trained"
        print(_progress_line(stage=stage, params=record, value=record[METRIC],
                             epoch=record["epochs_run"], epochs=epochs, status=status), flush=True)


def best_trial(records: list[dict]) -> dict:
    finished = [r for r in records if r[METRIC] is not None]
    if not finished:
        raise RuntimeError("every trial of the stage failed: no best point to refine")
    # Prefer trials that ran their full budget over early-stopped ones at equal accuracy,
    # then the smaller LR and warmup: a restored stage returns its trials in another order,
    # and the next stage must be planned around the same point.
    return max(finished, key=lambda r: (r[METRIC], r["epochs_run"], -r["lr"], -r["warmup_epochs"]))


def storage_for(config: SweepConfig) -> Path:
    path = Path(config.run.output_dir).resolve()
    os.makedirs(path, exist_ok=True)
    return path
