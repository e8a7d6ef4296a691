"""Why each worker group started, with how many workers, and from which step it resumed.

Ray Train's controller restarts the worker group after a failure, and resizes an elastic
one when the cluster grows or shrinks; the workers only see a fresh start. This callback
runs in the controller, prints one line per restart (reason, new size, resume step) and
appends one JSON line per started group to `restarts.jsonl` in the run directory, from
which the summary takes `restarts` and `world_size_history`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

RESTARTS_FILE = "restarts.jsonl"

try:  # Train V2's controller hooks (Ray >= 2.50); RunConfig passes them through.
    from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback
except ImportError:  # pragma: no cover - the pinned Ray has them
    ControllerCallback = ReportCallback = object


def _failure_text(error) -> str:
    """One line: the first failed rank's error (WorkerGroupError), or the controller's
    own (ControllerError: e.g. a new group that could not start in time)."""
    failures = getattr(error, "worker_failures", None)
    cause = getattr(error, "controller_failure", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        text = f"rank {rank}: {type(failure).__name__}: {failure}"
    elif cause is not None:
        text = f"controller: {type(cause).__name__}: {cause}"
    else:
        text = str(error)
    first = next((line for line in text.splitlines() if line.strip()), text)
    return first[:200]


class RestartLog(ControllerCallback, ReportCallback):
    def __init__(self, *, run_dir: str):
        self.path = Path(run_dir) / RESTARTS_FILE
        self._reason, self._detail = "start", ""
        self._size = None  # workers of the group being scheduled
        self._resume_step = self._resume_checkpoint = None
        self._resume_position: dict = {}

    def after_controller_start(self, train_run_context) -> None:
        # One fit() per file: a rerun of the same run directory starts a fresh history.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def after_report(self, training_report, metrics) -> None:
        if training_report.checkpoint is not None:
            first = metrics[0]
            self._resume_step = first.get("global_step")
            self._resume_checkpoint = Path(training_report.checkpoint.path).name
            # Where in the data the resume continues: epoch (1-based) and global sample
            # position inside it (0 at an epoch end; ingest/order.py).
            mid_epoch = "sample_position" in first
            self._resume_position = {
                "resume_epoch": first["resume_epoch"] + 1 if mid_epoch else first.get("epoch", 0) + 1,
                "resume_sample_position": first["sample_position"] if mid_epoch else 0}

    def after_controller_state_update(self, previous_state, current_state) -> None:
        state = type(current_state).__name__
        if state in ("RestartingState", "ReschedulingState"):
            error = current_state.training_failed_error
            # A preemption's deadline passing ends in a PreemptionError: a preemption
            # (its own retry budget, FailureConfig.max_preemption_failures), not a failure.
            preempted = type(error).__name__ == "PreemptionError"
            self._reason = "preemption" if preempted else "failure"
            self._detail = ("a node of the group was preempted" if preempted
                            else _failure_text(error))
        elif state == "ResizingState":
            self._reason = "resize"
            self._detail = "the cluster's free resources changed"
        elif state == "PreemptingState":
            self._reason, self._detail = "preemption", "a node is being preempted"
        elif state == "SchedulingState":
            self._size = current_state.scaling_decision.num_workers
        elif state == "RunningState" and type(previous_state).__name__ == "SchedulingState":
            self._record_start()

    def _record_start(self) -> None:
        event = {"time": time.time(), "reason": self._reason, "detail": self._detail,
                 "num_workers": self._size, "resume_step": self._resume_step,
                 "resume_checkpoint": self._resume_checkpoint, **self._resume_position}
        with self.path.open("a") as handle:
            handle.write(json.dumps(event) + "\n")
        if self._reason != "start":
            position = self._resume_position
            where = (f"global step {self._resume_step} ({self._resume_checkpoint}: epoch "
                     f"{position['resume_epoch']}, sample {position['resume_sample_position']})"
                     if self._resume_checkpoint else "the beginning (no checkpoint yet)")
            print(f"[raylars] restart ({self._reason}: {self._detail}): {self._size} workers, "
                  f"resuming from {where}", flush=True)
        self._reason, self._detail = "start", ""


def read_restarts(run_dir: Path) -> dict:
    """`restarts` and `world_size_history` for the summary (empty if nothing was logged)."""
    path = Path(run_dir) / RESTARTS_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    events = [json.loads(line) for line in lines if line.strip()]
    return {"restarts": sum(event["reason"] != "start" for event in events),
            "world_size_history": [event["num_workers"] for event in events],
            "restart_events": events}
