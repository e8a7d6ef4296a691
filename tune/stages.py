"""The search plan of a coarse-to-fine sweep, as plain values: the coarse log grid, the
fine grid around the best coarse point, the neighbouring warmups, and the exhaustive
grid used for comparison. No Ray here, so the plan is tested without processes.

The brief (SEED.md) found LARS hyperparameters this way: big steps first (one LR per
decade or half-decade), then refinement inside the best range, because each trial is an
expensive distributed run.

Every LR lies on one lattice, `lr_min * fine_factor**k`, the exhaustive sweep's grid. The
coarse grid is snapped onto it and the fine grid is a run of consecutive lattice points, so
a fine point that the coarse stage already trained is the very same run: the fine stage
reuses it when it finished and continues it from its checkpoint when ASHA stopped it,
instead of spending its epochs again.
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


def lattice_point(*, low: float, factor: float, index: int) -> float:
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    return _round(low * factor ** index)


def lattice_index(*, value: float, low: float, factor: float) -> int:
    """The index of the lattice point nearest to `value` (in log scale)."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    return round(math.log(value / low) / math.log(factor))


def lattice_grid(*, low: float, high: float, factor: float) -> list[float]:
    """Every lattice point `low * factor**k` inside [low, high]: the exhaustive grid."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low ({low}) <= high ({high})")
    count = math.floor(math.log(high / low) / math.log(factor) + 1e-9) + 1
    return [lattice_point(low=low, factor=factor, index=k) for k in range(count)]


def coarse_grid(*, low: float, high: float, points_per_decade: float,
                factor: float) -> list[float]:
    """`points_per_decade` LRs per decade over [low, high], each moved to the nearest
    lattice point inside the range (a half-decade, 3.16x, becomes 2.83x or 4x at
    factor 2**0.5)."""
    top = len(lattice_grid(low=low, high=high, factor=factor)) - 1
    indices = sorted({min(top, lattice_index(value=lr, low=low, factor=factor))
                      for lr in log_grid(low=low, high=high, points_per_decade=points_per_decade)})
    return [lattice_point(low=low, factor=factor, index=k) for k in indices]


def fine_grid(*, center: float, low: float, factor: float, num_points: int) -> list[float]:
    """`num_points` (odd) consecutive lattice points centred on the lattice point nearest
    `center`. It may reach past the search range: a best LR at the range's edge is worth
    looking beyond."""
    if num_points < 1 or num_points % 2 == 0:
        raise ValueError(f"num_points must be odd and >= 1, got {num_points}")
    middle = lattice_index(value=center, low=low, factor=factor)
    half = num_points // 2
    return [lattice_point(low=low, factor=factor, index=k)
            for k in range(middle - half, middle + half + 1)]


def neighbour_warmups(*, best: float, warmups: list[float]) -> list[float]:
    """The best warmup and its neighbours in the sorted list of candidates."""
    ordered = sorted(set(warmups))
    index = ordered.index(best)
    return ordered[max(0, index - 1): index + 2]


def grid_trials(*, lrs: list[float], warmups: list[float]) -> list[dict]:
    return [{"lr": lr, "warmup_epochs": warmup} for lr in lrs for warmup in warmups]


def split_known_trials(*, trials: list[dict], done: list[dict],
                       epochs: int) -> tuple[list[dict], list[dict]]:
    """Split the fine stage's `trials` against the coarse stage's records `done`.

    Returns (reused, to_run). A trial the coarse stage ran to `epochs`, or that failed
    there (a diverging LR fails again), is reused as it is. One that ASHA stopped early with
    a checkpoint is run again from that checkpoint: `resume_from` and `start_epoch` set.
    The rest start from scratch (`resume_from` None, `start_epoch` 0).
    """
    reused, to_run = [], []
    for trial in trials:
        known = next((r for r in done if _same_point(r, trial)), None)
        if known is not None and (known["error"] is not None or known["epochs_run"] >= epochs):
            reused.append({**known, "reused": True})
        elif known is not None and known.get("checkpoint"):
            to_run.append({**trial, "resume_from": known["checkpoint"],
                           "start_epoch": known["epochs_run"]})
        else:
            to_run.append({**trial, "resume_from": None, "start_epoch": 0})
    return reused, to_run


def _same_point(record: dict, trial: dict) -> bool:
    return (math.isclose(record["lr"], trial["lr"], rel_tol=1e-6)
            and record["warmup_epochs"] == trial["warmup_epochs"])


def _round(value: float) -> float:
    # Keep grid values readable in overrides and summaries (6 significant digits).
    return float(f"{value:.6g}")
