"""Per-step learning rate: linear warmup from 0 to the base LR, then polynomial decay
(power 2 in the brief, after You et al. 2017 and Goyal et al. 2017) to `end_lr`.

The rate is a pure function of the global step, so a resumed or resized run continues on
the same curve. `ScheduleConfig` owns the schedule's keys; they sit in the `optim` section
(`optim.warmup_epochs`, ...) because every optimizer schema extends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.validation import require


@dataclass
class ScheduleConfig:
    # Base learning rate after warmup.
    lr: float = 10.0
    # Linear warmup from 0 to `lr` over this many epochs.
    warmup_epochs: float = 2.0
    # Polynomial decay from `lr` to `end_lr` with this power.
    end_lr: float = 0.0
    poly_power: float = 2.0

    def __post_init__(self) -> None:
        require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        require(self.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(0 <= self.end_lr <= self.lr,
                f"optim.end_lr must be in [0, optim.lr={self.lr}], got {self.end_lr}")
        require(self.poly_power > 0, f"optim.poly_power must be > 0, got {self.poly_power}")


def lr_at(
    *, step: int, base_lr: float, end_lr: float, warmup_steps: int, total_steps: int,
    power: float = 2.0,
) -> float:
    """LR for optimizer step `step` (0-based).

    Warmup: step s < W uses base * (s + 1) / W, so the rate rises linearly from near 0 and
    the last warmup step uses the full base rate (no step is wasted at lr=0).
    Decay: base -> end_lr as (1 - (s - W) / (T - W)) ** power, reaching end_lr at s = T.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"schedule needs 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps == 0:
        return base_lr
    remaining = max(0.0, 1.0 - (step - warmup_steps) / decay_steps)
    return end_lr + (base_lr - end_lr) * remaining**power


@dataclass(frozen=True)
class WarmupPolySchedule:
    base_lr: float
    end_lr: float
    warmup_steps: int
    total_steps: int
    power: float = 2.0

    @classmethod
    def from_epochs(
        cls, *, base_lr: float, end_lr: float, warmup_epochs: float, epochs: int,
        steps_per_epoch: int, power: float,
    ) -> WarmupPolySchedule:
        total = epochs * steps_per_epoch
        warmup = min(total, round(warmup_epochs * steps_per_epoch))
        return cls(base_lr=base_lr, end_lr=end_lr, warmup_steps=warmup, total_steps=total,
                   power=power)

    @classmethod
    def from_config(cls, config: ScheduleConfig, *, epochs: int,
                    steps_per_epoch: int) -> WarmupPolySchedule:
        return cls.from_epochs(base_lr=config.lr, end_lr=config.end_lr,
                               warmup_epochs=config.warmup_epochs, epochs=epochs,
                               steps_per_epoch=steps_per_epoch, power=config.poly_power)

    def __call__(self, step: int) -> float:
        return lr_at(step=step, base_lr=self.base_lr, end_lr=self.end_lr,
                     warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                     power=self.power)
