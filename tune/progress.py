"""What a sweep tells the user while it runs: the plan at start (trials and trial-epochs of
each stage, the later stages as upper bounds since they depend on the first's result), and
after each finished trial how many remain and about how long they will take, from the
seconds per trial-epoch measured so far. No Ray here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def asha_epochs(*, num_trials: int, max_epochs: int, grace_epochs: int,
                reduction_factor: float) -> float:
    """Expected trial-epochs of `num_trials` under ASHA: all reach the first rung
    (grace_epochs), 1/reduction_factor of them each next rung (grace * rf**k), the last
    fraction max_epochs."""
    rungs = []
    milestone = float(grace_epochs)
    while milestone < max_epochs:
        rungs.append(milestone)
        milestone *= reduction_factor
    rungs.append(float(max_epochs))
    total, reached, survivors = 0.0, 0.0, float(num_trials)
    for rung in rungs:
        total += survivors * (rung - reached)
        reached, survivors = rung, survivors / reduction_factor
    return total


@dataclass
class StageEstimate:
    name: str
    num_trials: int  # at most, for stages planned from an earlier one's result
    trial_epochs: float  # expected (ASHA) or at most
    bound: bool  # True: an upper bound


@dataclass
class SweepClock:
    """The sweep's plan and its progress: trials and trial-epochs done, and the time."""

    stages: list[StageEstimate]
    epochs_per_trial: int
    started: float = field(default_factory=time.monotonic)
    trials_done: int = 0
    epochs_done: float = 0.0
    stage_epochs_done: dict[str, float] = field(default_factory=dict)

    def plan_lines(self) -> list[str]:
        lines = [f"  {s.name}: {'up to ' if s.bound else ''}{_trials(s.num_trials)}, "
                 f"{'at most' if s.bound else 'about'} {s.trial_epochs:.0f} trial-epochs"
                 for s in self.stages]
        total_trials = sum(s.num_trials for s in self.stages)
        total_epochs = sum(s.trial_epochs for s in self.stages)
        return [f"[raylars tune] plan: up to {total_trials} trials of at most "
                f"{self.epochs_per_trial} epochs, about {total_epochs:.0f} trial-epochs at most "
                "(later stages depend on the first)",
                *(f"[raylars tune] {line.strip()}" for line in lines)]

    def settle(self, name: str, *, num_trials: int, trial_epochs: float) -> None:
        """Replace a bound with the stage's real size once its trials are known."""
        for stage in self.stages:
            if stage.name == name:
                stage.num_trials, stage.trial_epochs, stage.bound = num_trials, trial_epochs, False

    def trial_done(self, *, stage: str, epochs: float) -> None:
        self.trials_done += 1
        self.epochs_done += epochs
        self.stage_epochs_done[stage] = self.stage_epochs_done.get(stage, 0.0) + epochs

    def remaining_epochs(self) -> float:
        return sum(max(0.0, s.trial_epochs - self.stage_epochs_done.get(s.name, 0.0))
                   for s in self.stages)

    def status(self) -> str:
        """`n/N trials, ~M min left` (the time left once an epoch has been timed)."""
        total_trials = sum(s.num_trials for s in self.stages)
        text = f"{self.trials_done}/{total_trials} trials"
        if self.epochs_done > 0:
            per_epoch = (time.monotonic() - self.started) / self.epochs_done
            left = per_epoch * self.remaining_epochs()
            text += f", ~{_minutes(left)} left"
        return text


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
