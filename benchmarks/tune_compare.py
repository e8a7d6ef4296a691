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
import json
import sys
from pathlib import Path

# Replace (not prepend) the script's folder: Ray ships the driver's script folder to its
# workers' sys.path, where benchmarks/comms.py would shadow the comms package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from launch.config import compose  # noqa: E402
from launch.job import run_tune_sweep, start_ray  # noqa: E402
from tune.plot import MARKERS  # noqa: E402

DEFAULTS = ["trainer.num_workers=1", "trainer.epochs=5", "cluster.num_cpus=4"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args(argv)
    overrides = DEFAULTS + overrides
    start_ray(compose(overrides))  # one cluster for both sweeps
    results = {}
    for name in ("coarse_to_fine", "exhaustive"):
        config = compose(overrides + [f"tune={name}", f"run.output_dir={args.out / name}"], for_tune=True)
        results[name] = run_tune_sweep(config)
    write_report(results, out=args.out, overrides=overrides)


def write_report(results: dict, *, out: Path, overrides: list[str]) -> None:
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
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text + "\n")
    (out / "compare.json").write_text(json.dumps({"rows": rows, "gap_pt": gap_pt,
                                                  "trial_epoch_share": share}, indent=2))
    plot_compare(results, path=out / "compare.png")


def plot_compare(results: dict, *, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
