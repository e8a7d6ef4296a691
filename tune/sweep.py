"""The sweep itself: plan the stages (coarse with ASHA, then fine around the best; or one
exhaustive fine grid), run them in order, and summarise."""

from __future__ import annotations

from launch.config import Config
from tune.runner import METRIC, StagePlan, best_trial, print_reused, run_stage, storage_for
from tune.stages import (coarse_grid, fine_grid, grid_trials, lattice_grid, neighbour_warmups,
                         split_known_trials)


def run_sweep(config: Config) -> dict:
    """Run the configured sweep on the connected Ray cluster; return the summary."""
    storage = storage_for(config)
    tune = config.tune
    stages = []
    if tune.name == "exhaustive":
        lrs = lattice_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor)
        plan = StagePlan("exhaustive", _from_scratch(grid_trials(lrs=lrs, warmups=tune.warmup_epochs)),
                         early_stopping=False)
        stages.append(_stage(plan, config=config, storage=storage))
    else:
        coarse_lrs = coarse_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor,
                                 points_per_decade=tune.coarse_points_per_decade)
        plan = StagePlan("coarse", _from_scratch(grid_trials(lrs=coarse_lrs, warmups=tune.warmup_epochs)),
                         early_stopping=True)
        stages.append(_stage(plan, config=config, storage=storage))
        coarse = stages[0]
        grid = grid_trials(
            lrs=fine_grid(center=coarse["best"]["lr"], low=tune.lr_min, factor=tune.fine_factor,
                          num_points=tune.fine_points),
            warmups=neighbour_warmups(best=coarse["best"]["warmup_epochs"],
                                      warmups=tune.warmup_epochs))
        # Fine points the coarse stage already trained are not trained again (stages.py).
        reused, to_run = split_known_trials(trials=grid, done=coarse["trials"],
                                            epochs=config.trainer.epochs)
        print_reused(reused, stage="fine", epochs=config.trainer.epochs)
        fine = StagePlan("fine", to_run, early_stopping=False)
        stages.append(_stage(fine, config=config, storage=storage, reused=reused))
    return summarize(stages)


def _from_scratch(trials: list[dict]) -> list[dict]:
    return [{**trial, "resume_from": None, "start_epoch": 0} for trial in trials]


def _stage(plan: StagePlan, *, config: Config, storage, reused: tuple = ()) -> dict:
    ran = run_stage(plan, config=config, storage=storage) if plan.trials else []
    records = ran + list(reused)
    return {
        "name": plan.name,
        "num_trials": len(ran),
        "num_reused": len(reused),
        "num_continued": sum(r["start_epoch"] > 0 for r in ran),
        "num_failed": sum(r["error"] is not None for r in ran),
        # Only the epochs this stage trained: a continued trial counts from its checkpoint.
        "trial_epochs": sum(max(0, r["epochs_run"] - r["start_epoch"]) for r in ran),
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
