"""Coarse-to-fine vs exhaustive LR/warmup search on the digits task.

Usage:
    python benchmarks/tune_compare.py --out DIR [hydra overrides for both sweeps ...]

Runs `tune=coarse_to_fine` and `tune=exhaustive` with the same trainer settings on one
embedded local Ray cluster, then prints and writes (DIR/compare.md, DIR/compare.json,
DIR/compare.png) the best val_top1 of each and the trial-epochs each spent. The goal from
the issue: coarse-to-fine within 0.5 pt of exhaustive at <= 35% of its trial-epochs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_util import pyplot, save_figure, write_report

from job.config import compose
from job.session import start_ray
from tune.config import compose_sweep
from tune.plot import MARKERS
from tune.sweep import run_tune_sweep

DEFAULTS = ["trainer.num_workers=1", "trainer.epochs=5", "cluster.num_cpus=4"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args(argv)
    overrides = DEFAULTS + overrides
    start_ray(compose(overrides))  # one cluster for both sweeps
    results = {}
    for name in ("coarse_to_fine", "exhaustive"):
        config = compose_sweep(overrides + [f"tune={name}", f"run.output_dir={args.out / name}"])
        results[name] = run_tune_sweep(config)
    report(results, out=args.out, overrides=overrides)


def report(results: dict, *, out: Path, overrides: list[str]) -> None:
    c2f, full = results["coarse_to_fine"], results["exhaustive"]
    rows = {name: {"best_val_top1": r["best"]["val_top1"], "best_lr": r["best"]["lr"],
                   "best_warmup_epochs": r["best"]["warmup_epochs"],
                   "trials": sum(s["num_trials"] for s in r["stages"]),
                   "trial_epochs": r["total_trial_epochs"]} for name, r in results.items()}
    gap_pt = 100 * (full["best"]["val_top1"] - c2f["best"]["val_top1"])
    share = c2f["total_trial_epochs"] / full["total_trial_epochs"]
    lines = ["| sweep | best val_top1 | best lr | best warmup | trials | trial-epochs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['best_val_top1']:.4f} | {r['best_lr']:.4g} | "
              f"{r['best_warmup_epochs']:g} | {r['trials']} | {r['trial_epochs']} |"
              for n, r in rows.items()]
    lines.append(f"\ncoarse-to-fine is {gap_pt:+.2f} pt below exhaustive at {100 * share:.1f}% of "
                 f"its trial-epochs (goal: <= 0.5 pt at <= 35%). Overrides: {' '.join(overrides)}")
    write_report(out, name="compare", lines=lines,
                 data={"rows": rows, "gap_pt": gap_pt, "trial_epoch_share": share})
    plot_compare(results, path=out / "compare.png")


def plot_compare(results: dict, *, path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, summary) in zip(axes, results.items(), strict=True):
        for stage in summary["stages"]:
            trials = [t for t in stage["trials"] if t["val_top1"] is not None]
            ax.scatter([t["lr"] for t in trials], [t["val_top1"] for t in trials],
                       c=[t["warmup_epochs"] for t in trials], cmap="viridis", vmin=0,
                       marker=MARKERS.get(stage["name"], "o"),
                       label=f"{stage['name']} ({stage['trial_epochs']} trial-epochs)")
        ax.set_xscale("log")
        ax.set_xlabel("base LR")
        ax.set_title(f"{name}: best {summary['best']['val_top1']:.4f}, "
                     f"{summary['total_trial_epochs']} trial-epochs")
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("val_top1 (colour: warmup epochs)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
