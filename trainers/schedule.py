"""Per-step learning rate: linear warmup from 0 to the base LR, then polynomial decay
(power 2 in the brief, after You et al. 2017 and Goyal et al. 2017) to `end_lr`.

The rate is a pure function of the global step, so a resumed or resized run continues on
the same curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def __call__(self, step: int) -> float:
        return lr_at(step=step, base_lr=self.base_lr, end_lr=self.end_lr,
                     warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                     power=self.power)

    def state_dict(self) -> dict:
        return asdict(self)
