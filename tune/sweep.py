"""The sweep itself: plan the stages (coarse with ASHA, then fine around the best; or one
exhaustive fine grid), run them in order, and summarise."""

from __future__ import annotations

import math

from launch.config import Config
from tune.runner import METRIC, StagePlan, best_trial, run_stage, storage_for
from tune.stages import fine_grid, grid_trials, log_grid, neighbour_warmups


def run_sweep(config: Config) -> dict:
    """Run the configured sweep on the connected Ray cluster; return the summary."""
    storage = storage_for(config)
    tune = config.tune
    stages = []
    if tune.name == "exhaustive":
        lrs = log_grid(low=tune.lr_min, high=tune.lr_max,
                       points_per_decade=1 / math.log10(tune.fine_factor))
        plan = StagePlan("exhaustive", grid_trials(lrs=lrs, warmups=tune.warmup_epochs), False)
        stages.append(_stage(plan, config=config, storage=storage))
    else:
        coarse_lrs = log_grid(low=tune.lr_min, high=tune.lr_max,
                              points_per_decade=tune.coarse_points_per_decade)
        plan = StagePlan("coarse", grid_trials(lrs=coarse_lrs, warmups=tune.warmup_epochs), True)
        stages.append(_stage(plan, config=config, storage=storage))
        centre = stages[0]["best"]
        fine = StagePlan("fine", grid_trials(
            lrs=fine_grid(center=centre["lr"], factor=tune.fine_factor,
                          num_points=tune.fine_points),
            warmups=neighbour_warmups(best=centre["warmup_epochs"],
                                      warmups=tune.warmup_epochs)), False)
        stages.append(_stage(fine, config=config, storage=storage))
    return summarize(stages)


def _stage(plan: StagePlan, *, config: Config, storage) -> dict:
    records = run_stage(plan, config=config, storage=storage)
    return {
        "name": plan.name,
        "num_trials": len(records),
        "num_failed": sum(r["error"] is not None for r in records),
        "trial_epochs": sum(r["epochs_run"] for r in records),
        "best": best_trial(records),
        "trials": records,
    }


def summarize(stages: list[dict]) -> dict:
    best_stage = max(stages, key=lambda s: s["best"][METRIC])
    best = {**{k: best_stage["best"][k] for k in ("lr", "warmup_epochs", METRIC)},
            "stage": best_stage["name"]}
    return {
        "best": best,
        "override": f"optim.lr={best['lr']:.6g} optim.warmup_epochs={best['warmup_epochs']:g}",
        "stages": stages,
        "total_trial_epochs": sum(s["trial_epochs"] for s in stages),
    }
