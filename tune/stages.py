"""The search plan of a coarse-to-fine sweep, as plain values: the coarse log grid, the
fine grid around the best coarse point, the neighbouring warmups, and the exhaustive
grid used for comparison. No Ray here, so the plan is tested without processes.

The brief (SEED.md) found LARS hyperparameters this way: big steps first (one LR per
decade or half-decade), then refinement inside the best range, because each trial is an
expensive distributed run.
"""

from __future__ import annotations

import math


def log_grid(*, low: float, high: float, points_per_decade: float) -> list[float]:
    """LRs from `low` up to `high` (both included when they fall on the grid), evenly
    spaced in log10 with `points_per_decade` points per decade."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low ({low}) <= high ({high})")
    if points_per_decade <= 0:
        raise ValueError(f"points_per_decade must be > 0, got {points_per_decade}")
    steps = math.log10(high / low) * points_per_decade
    count = math.floor(steps + 1e-9) + 1
    return [_round(low * 10 ** (k / points_per_decade)) for k in range(count)]


def fine_grid(*, center: float, factor: float, num_points: int,
              low: float | None = None, high: float | None = None) -> list[float]:
    """`num_points` LRs centred on `center`, consecutive ones a `factor` apart (e.g. 2**0.5),
    clipped to [low, high] when given."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    half = (num_points - 1) / 2
    grid = [_round(center * factor ** (k - half)) for k in range(num_points)]
    return [lr for lr in grid if (low is None or lr >= low * (1 - 1e-9))
            and (high is None or lr <= high * (1 + 1e-9))]


def neighbour_warmups(*, best: float, warmups: list[float]) -> list[float]:
    """The best warmup and its neighbours in the sorted list of candidates."""
    ordered = sorted(set(warmups))
    index = ordered.index(best)
    return ordered[max(0, index - 1): index + 2]


def grid_trials(*, lrs: list[float], warmups: list[float]) -> list[dict]:
    return [{"lr": lr, "warmup_epochs": warmup} for lr in lrs for warmup in warmups]


def _round(value: float) -> float:
    # Keep grid values readable in overrides and summaries (6 significant digits).
    return float(f"{value:.6g}")
