"""Fault injection for the recovery tests (`debug.*`), in one place.

The trainer has one hook into it, `FaultInjector.at(event, ...)`, called at two events:
"step" (before each optimizer step: raise, or kill the process) and "checkpoint" (before a checkpoint is written). Each
fault fires once per run directory (a marker file remembers it), so the restarted group
trains on.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.validation import require
from trainers.checkpoint import CHECKPOINT_FILE, crash_while_writing


@dataclass
class DebugConfig:
    # Raise once, on rank 0, before this global step (a failed worker group).
    fail_at_step: int | None = None
    # Once, rank 0 crashes (exits) halfway through writing this epoch's checkpoint into
    # the run directory (the atomic-checkpoint test).
    fail_in_checkpoint_epoch: int | None = None
    # Once, rank 0 kills its own process (SIGKILL: no exception, no cleanup) before this
    # global step, after the run's last checkpoint is registered (a worker lost mid-epoch).
    kill_at_step: int | None = None

    def __post_init__(self) -> None:
        require(self.kill_at_step is None or self.kill_at_step >= 1,
                f"debug.kill_at_step must be >= 1 or null, got {self.kill_at_step}")
        require(self.fail_at_step is None or self.fail_at_step >= 0,
                f"debug.fail_at_step must be >= 0 or null, got {self.fail_at_step}")
        require(self.fail_in_checkpoint_epoch is None or self.fail_in_checkpoint_epoch >= 1,
                "debug.fail_in_checkpoint_epoch must be >= 1 or null, "
                f"got {self.fail_in_checkpoint_epoch}")


class FaultInjector:
    STEP_MARKER = ".fault_injected"
    CHECKPOINT_MARKER = ".checkpoint_fault_injected"
    KILL_MARKER = ".kill_fault_injected"

    def __init__(self, config: DebugConfig, *, rank: int, run_dir: str | None,
                 before_crash: Callable[[], object] = lambda: None):
        self.config, self.rank, self.before_crash = config, rank, before_crash
        self.run_dir = Path(run_dir) if run_dir else None
        self.armed = rank == 0 and self.run_dir is not None and (
            config.fail_at_step is not None or config.fail_in_checkpoint_epoch is not None
            or config.kill_at_step is not None)

    def at(self, event: str, *, global_step: int, epoch: int, state=None,
           name: str = "", previous: str | None = None) -> None:
        """`event` "step": maybe raise; "checkpoint": maybe crash writing `state` as `name`
        (once `previous`, the run's last checkpoint before it, is registered)."""
        if not self.armed:
            return
        if event == "step" and global_step == self.config.fail_at_step:
            if self._first_time(self.STEP_MARKER):
                raise RuntimeError(f"fault injected before global step {global_step} "
                                   "(debug.fail_at_step)")
        if event == "step" and global_step == self.config.kill_at_step:
            if self._first_time(self.KILL_MARKER):
                self._wait_for_registered(previous)
                print(f"[raylars] fault injected: killing rank 0 before global step "
                      f"{global_step} (debug.kill_at_step)", flush=True)
                self.before_crash()  # the progress mark on disk: the lost steps count exactly
                os.kill(os.getpid(), signal.SIGKILL)
        elif event == "checkpoint" and epoch == self.config.fail_in_checkpoint_epoch:
            if self._first_time(self.CHECKPOINT_MARKER):
                self._wait_for_registered(previous)
                self.before_crash()
                crash_while_writing(state, path=self.run_dir / name / CHECKPOINT_FILE)

    def _wait_for_registered(self, wanted: str | None, *, timeout_s: float = 60.0) -> None:
        """Let Ray Train register the previous checkpoint first: its controller takes
        reports in on its own polling interval, and a crash before that would lose the
        report too, which is not the fault this injects (a crash mid-write)."""
        if wanted is None:
            return
        snapshot = self.run_dir / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if snapshot.is_file() and wanted in snapshot.read_text():
                return
            time.sleep(0.2)

    def _first_time(self, marker: str) -> bool:
        path = self.run_dir / marker
        if path.exists():
            return False
        path.touch()
        return True
