"""Config of the LR/warmup sweep (`tune=coarse_to_fine|exhaustive`): its schema, and the
sweep's root config (`SweepConfig`: the run's `Config` plus `tune`), composed from
`conf/sweep.yaml` by `launch/tune.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.validation import require
from job.config import Config, compose_unchecked, validate

TUNE_NAMES = ("coarse_to_fine", "exhaustive")
FINE_SHAPES = ("grid", "cross")


@dataclass
class TuneConfig:
    name: str = "coarse_to_fine"
    # LR search range (inclusive), searched on a log scale.
    lr_min: float = 0.3
    lr_max: float = 30.0
    # Stage 1: this many LRs per decade (2: half-decades), crossed with every warmup.
    coarse_points_per_decade: float = 1.0
    warmup_epochs: list[float] = field(default_factory=lambda: [0.0, 2.0])
    # Every LR is on the lattice lr_min * fine_factor**k (the exhaustive grid); stage 2 is
    # fine_points (odd) consecutive lattice points centred on the best coarse LR.
    fine_factor: float = 1.4142135623730951  # 2 ** 0.5
    fine_points: int = 3
    # grid: every fine LR x every neighbouring warmup; cross: the fine LRs at the best
    # warmup, then the neighbouring warmups at the best LR (tune/sweep.py).
    fine_shape: str = "cross"
    # ASHA early stopping in stage 1, on val_top1.
    asha_grace_epochs: int = 1
    asha_reduction_factor: float = 3.0
    # Trials at once (null: as many as the cluster's CPUs hold, each trial's workers
    # plus one CPU for its Ray Data tasks).
    max_concurrent_trials: int | None = None

    def __post_init__(self) -> None:
        require(self.name in TUNE_NAMES,
                f"tune.name: unknown sweep {self.name!r}; known: {', '.join(TUNE_NAMES)}")
        require(self.lr_min > 0, f"tune.lr_min must be > 0, got {self.lr_min}")
        require(self.lr_max >= self.lr_min,
                f"tune.lr_max ({self.lr_max}) must be >= tune.lr_min ({self.lr_min})")
        require(self.coarse_points_per_decade > 0,
                f"tune.coarse_points_per_decade must be > 0, got {self.coarse_points_per_decade}")
        require(len(self.warmup_epochs) >= 1 and min(self.warmup_epochs) >= 0,
                f"tune.warmup_epochs must be a non-empty list of values >= 0, got {self.warmup_epochs}")
        require(self.fine_factor > 1, f"tune.fine_factor must be > 1, got {self.fine_factor}")
        require(self.fine_points >= 1 and self.fine_points % 2 == 1,
                f"tune.fine_points must be odd and >= 1 (centred on the best coarse LR), "
                f"got {self.fine_points}")
        require(self.fine_shape in FINE_SHAPES,
                f"tune.fine_shape: unknown {self.fine_shape!r}; known: {', '.join(FINE_SHAPES)}")
        require(self.asha_grace_epochs >= 1,
                f"tune.asha_grace_epochs must be >= 1, got {self.asha_grace_epochs}")
        require(self.asha_reduction_factor > 1,
                f"tune.asha_reduction_factor must be > 1, got {self.asha_reduction_factor}")
        require(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
                f"tune.max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")


@dataclass
class SweepConfig(Config):
    tune: TuneConfig = field(default_factory=TuneConfig)


def validate_sweep(cfg) -> SweepConfig:
    """The run's checks plus those of a sweep's trials."""
    config = validate(cfg)
    require(max(config.tune.warmup_epochs) < config.trainer.epochs,
            f"tune.warmup_epochs ({list(config.tune.warmup_epochs)}) must all be < "
            f"trainer.epochs ({config.trainer.epochs})")
    require(not config.trainer.elastic,
            "trainer.min_workers/trainer.max_workers: a tune sweep runs fixed-size "
            "trials; set trainer.num_workers instead")
    return config


def compose_sweep(overrides: list[str] | None = None) -> SweepConfig:
    """Compose `conf/sweep.yaml` with Hydra overrides and validate it (for tests, tools)."""
    return validate_sweep(compose_unchecked(overrides, config_name="sweep", schema=SweepConfig))
