"""The sweep itself: plan the stages (coarse with ASHA, then fine around the best; or one
exhaustive fine grid), run them in order, and summarise. `tune.fine_shape` picks the fine
neighbourhood: `grid` (every fine LR x every neighbouring warmup) or `cross` (the fine LRs
at the best warmup, then a `fine_warmup` stage: the neighbouring warmups at the best LR)."""

from __future__ import annotations

import json
import time

from job.config import to_plain_dict
from job.session import ray_session
from tune.config import SweepConfig
from tune.plot import plot_sweep
from tune.progress import StageEstimate, SweepClock, asha_epochs
from tune.runner import METRIC, StagePlan, best_trial, print_reused, run_stage, storage_for
from tune.stages import (
    coarse_grid,
    fine_grid,
    grid_trials,
    lattice_grid,
    neighbour_warmups,
    split_known_trials,
)


def run_sweep(config: SweepConfig) -> dict:
    """Run the configured sweep on the connected Ray cluster; return the summary."""
    storage = storage_for(config)
    tune = config.tune
    stages = []
    clock = plan_clock(config)
    print("\n".join(clock.plan_lines()), flush=True)
    if tune.name == "exhaustive":
        lrs = lattice_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor)
        trials = grid_trials(lrs=lrs, warmups=tune.warmup_epochs)
        stages.append(_refine("exhaustive", trials, done=[], config=config, storage=storage,
                              clock=clock))
        return summarize(stages)
    coarse_lrs = coarse_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor,
                             points_per_decade=tune.coarse_points_per_decade)
    plan = StagePlan("coarse", _from_scratch(grid_trials(lrs=coarse_lrs, warmups=tune.warmup_epochs)),
                     early_stopping=True)
    stages.append(_stage(plan, config=config, storage=storage, clock=clock))
    best = stages[0]["best"]
    lrs = fine_grid(center=best["lr"], low=tune.lr_min, factor=tune.fine_factor,
                    num_points=tune.fine_points)
    warmups = neighbour_warmups(best=best["warmup_epochs"], warmups=tune.warmup_epochs)
    done = list(stages[0]["trials"])
    if tune.fine_shape == "grid":
        stages.append(_refine("fine", grid_trials(lrs=lrs, warmups=warmups), done=done,
                              config=config, storage=storage, clock=clock))
    else:
        # cross: the fine LRs at the best warmup, then the neighbouring warmups at the best
        # of those LRs. Half the grid's trials; it misses a diagonal optimum (a longer
        # warmup that only pays off at a larger LR).
        fine = _refine("fine", grid_trials(lrs=lrs, warmups=[best["warmup_epochs"]]), done=done,
                       config=config, storage=storage, clock=clock)
        stages.append(fine)
        stages.append(_refine("fine_warmup", grid_trials(lrs=[fine["best"]["lr"]], warmups=warmups),
                              done=done + fine["trials"], config=config, storage=storage,
                              clock=clock))
    return summarize(stages)


def plan_clock(config: SweepConfig) -> SweepClock:
    """The sweep's stages with their trials and trial-epochs: the first stage's known, the
    later ones' as upper bounds (they are planned around the first stage's best point)."""
    tune, epochs = config.tune, config.trainer.epochs
    if tune.name == "exhaustive":
        count = len(lattice_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor))
        count *= len(tune.warmup_epochs)
        return SweepClock([StageEstimate("exhaustive", count, count * epochs, bound=False)],
                          epochs_per_trial=epochs)
    coarse = len(coarse_grid(low=tune.lr_min, high=tune.lr_max, factor=tune.fine_factor,
                             points_per_decade=tune.coarse_points_per_decade))
    coarse *= len(tune.warmup_epochs)
    stages = [StageEstimate("coarse", coarse, asha_epochs(
        num_trials=coarse, max_epochs=epochs, grace_epochs=tune.asha_grace_epochs,
        reduction_factor=tune.asha_reduction_factor), bound=False)]
    # At most three neighbouring warmups (the best and one on each side).
    neighbours = min(3, len(set(tune.warmup_epochs)))
    if tune.fine_shape == "grid":
        stages.append(StageEstimate("fine", tune.fine_points * neighbours,
                                    tune.fine_points * neighbours * epochs, bound=True))
    else:
        stages.append(StageEstimate("fine", tune.fine_points, tune.fine_points * epochs, bound=True))
        stages.append(StageEstimate("fine_warmup", neighbours - 1, (neighbours - 1) * epochs,
                                    bound=True))
    return SweepClock(stages, epochs_per_trial=epochs)


def _refine(name: str, trials: list[dict], *, done: list[dict], config: SweepConfig, storage,
            clock: SweepClock | None = None) -> dict:
    """A stage trained to the full epochs; points already trained in `done` are not
    trained again (stages.split_known_trials)."""
    epochs = config.trainer.epochs
    reused, to_run = split_known_trials(trials=trials, done=done, epochs=epochs)
    print_reused(reused, stage=name, epochs=epochs)
    if clock is not None:
        clock.settle(name, num_trials=len(to_run),
                     trial_epochs=sum(epochs - t["start_epoch"] for t in to_run))
    return _stage(StagePlan(name, to_run, early_stopping=False), config=config, storage=storage,
                  reused=reused, clock=clock)


def _from_scratch(trials: list[dict]) -> list[dict]:
    return [{**trial, "resume_from": None, "start_epoch": 0} for trial in trials]


def _stage(plan: StagePlan, *, config: SweepConfig, storage, reused: tuple = (),
           clock: SweepClock | None = None) -> dict:
    ran = run_stage(plan, config=config, storage=storage, clock=clock) if plan.trials else []
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


TUNE_SUMMARY_FILE = "tune_summary.json"


def run_tune_sweep(config: SweepConfig) -> dict:
    """Run the configured sweep in a Ray session; write tune_summary.json and tune.png;
    return the summary."""
    with ray_session(config) as output_dir:
        summary = run_sweep(config)
        summary["leaked_cpus"] = _cpus_still_held()
    summary["summary_path"] = str(output_dir / TUNE_SUMMARY_FILE)
    summary["plot"] = str(output_dir / "tune.png")
    summary["config"] = to_plain_dict(config)
    (output_dir / TUNE_SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    plot_sweep(summary, path=output_dir / "tune.png")
    return summary


def _cpus_still_held(*, timeout_s: float = 30.0) -> float:
    """CPUs not yet returned to the cluster after the sweep (trials release asynchronously)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout_s
    while True:
        held = total - ray.available_resources().get("CPU", 0.0)
        if held <= 1e-6 or time.monotonic() > deadline:
            return held
        time.sleep(1.0)
