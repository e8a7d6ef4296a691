"""tune.png: val_top1 against LR (log axis), one marker per stage, warmup as colour;
failed trials drawn at the bottom with an x."""

from __future__ import annotations

from pathlib import Path

MARKERS = {"coarse": "o", "fine": "s", "fine_warmup": "D", "exhaustive": "^"}


def plot_sweep(summary: dict, *, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmups = sorted({t["warmup_epochs"] for s in summary["stages"] for t in s["trials"]})
    colours = {w: plt.cm.viridis(i / max(1, len(warmups) - 1)) for i, w in enumerate(warmups)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for stage in summary["stages"]:
        for trial in stage["trials"]:
            failed = trial["val_top1"] is None
            ax.scatter(trial["lr"], 0.0 if failed else trial["val_top1"],
                       marker="x" if failed else MARKERS.get(stage["name"], "o"),
                       color=colours[trial["warmup_epochs"]], s=36, alpha=0.85)
    handles = [plt.Line2D([], [], marker=MARKERS.get(s["name"], "o"), linestyle="", color="gray",
                          label=f"{s['name']} ({s['num_trials']} trials, {s['trial_epochs']} trial-epochs)")
               for s in summary["stages"]]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=colours[w],
                           label=f"warmup {w:g} ep") for w in warmups]
    best = summary["best"]
    ax.axvline(best["lr"], color="red", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("base LR (optim.lr)")
    ax.set_ylabel("val_top1 (last reported epoch)")
    ax.set_title(title or f"best: lr={best['lr']:.4g} warmup={best['warmup_epochs']:g} "
                          f"val_top1={best['val_top1']:.4f}")
    ax.legend(handles=handles, fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
