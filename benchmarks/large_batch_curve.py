"""The large-batch curve: SGD (LR scaled linearly with the batch, warmup) against LARS
(warmup) from batch 64 to 4096 on augmented digits, every LR and warmup found by
`launch/tune.py`'s coarse-to-fine sweep, every tuned setting trained with 3 seeds.

Usage:
    python benchmarks/large_batch_curve.py --out outputs/large_batch_curve [--plan]
        [--batches 64 256 1024 4096] [--copies 94] [--image-size 16] [--min-steps 300]
        [--seeds 0 1 2] [--only sweep|train|ablation ...] [--cells 'train/lars_*' ...]
        [--max-cells N]

The work is a list of cells, each a command a user runs, in this order:
- `sweep/<opt>_b<B>`: `python launch/tune.py` for one optimizer and batch, on a third of
  the epoch budget (its `tune_summary.json` marks it done);
- `train/<opt>_b<B>_s<seed>`: `python launch/run.py` with the sweep's best LR and warmup,
  the full epoch budget (its `summary.json` marks it done);
- `ablation/<variant>_s<seed>`, at the largest batch, LARS at its tuned LR and warmup in
  bf16, fp16 (fp32 master weights), fp16_pure, and without the bias/BN exclusion.
Every finished cell's result and cost go into the ledger (--ledger, by default
benchmarks/results/large_batch_curve_cells.json, committed with the repo), so the whole
may run over several sittings and machines: a rerun skips the cells the ledger holds and
builds the report from it alone; OUT (the data and each cell's run folder) may be lost
between sittings. A finished run folder in OUT that the ledger lacks is added to it. An
interrupted sweep restores its finished stages from OUT; an interrupted training cell
starts again. `--cells` (shell patterns) runs only the matching cells, and `--max-cells`
stops after that many new cells. After every cell the report is rewritten:
OUT/large_batch_curve.{md,json,png}, with the cost of every cell and the total over all
sittings.

One epoch budget for every batch: the fewest epochs giving the largest batch
--min-steps optimizer steps. The sweeps search one decade either side of a centre that
scales with the batch: SGD linearly (0.2 at batch 64, conf/optim/sgd.yaml), LARS with
its square root (10 at batch 64, conf/optim/lars.yaml).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench_util import pyplot, save_figure, write_json, write_report

REPO = Path(__file__).resolve().parent.parent
LEDGER = REPO / "benchmarks/results/large_batch_curve_cells.json"
OPTIMIZERS = ("sgd", "lars")
# The LR a batch of 64 starts from (each optimizer's config default) and how the sweep's
# centre grows with the batch: linear for SGD (Goyal et al.), square root for LARS, whose
# trust ratio already adapts each layer's step.
BASE_LR = {"sgd": 0.2, "lars": 10.0}
LR_SCALING = {"sgd": 1.0, "lars": 0.5}
ABLATIONS = {"bf16": ["precision=bf16"], "fp16": ["precision=fp16"],
             "fp16_pure": ["precision=fp16_pure"], "no_exclusion": ["optim.exclude_bn_bias=false"]}
# Digits are 1-channel; the set is already augmented (copies), each copy shifted again.
DATA = ["data=parquet", "data.channels=1", "data.mean=[0.5]", "data.std=[0.5]",
        "data.augment=shift", "data.val_crop_fraction=1.0"]
# Only the final checkpoint: the cells are short, and a rerun restarts a cell anyway.
QUIET_CHECKPOINTS = ["trainer.checkpoint_every_epochs=1000", "trainer.num_checkpoints_to_keep=1"]


@dataclass
class Cell:
    name: str  # its folder under OUT, e.g. "train/lars_b4096_s0"
    kind: str  # sweep | train | ablation
    optimizer: str
    batch: int
    seed: int = 0
    variant: str = "fp32"
    extra: list[str] = field(default_factory=list)

    def done_file(self, out: Path) -> Path:
        return out / self.name / ("tune_summary.json" if self.kind == "sweep" else "summary.json")


def budget(*, train_samples: int, largest_batch: int, min_steps: int) -> int:
    """The fewest epochs giving the largest batch `min_steps` steps (epochs have
    train_samples // batch steps, ingest/order.py)."""
    per_epoch = train_samples // largest_batch
    if per_epoch < 1:
        raise SystemExit(f"batch {largest_batch} is larger than the training set "
                         f"({train_samples}); raise --copies")
    return math.ceil(min_steps / per_epoch)


def sweep_range(optimizer: str, batch: int) -> tuple[float, float]:
    centre = BASE_LR[optimizer] * (batch / 64) ** LR_SCALING[optimizer]
    return centre / 10, centre * 10


def plan(args) -> list[Cell]:
    cells = []
    for optimizer in OPTIMIZERS:
        for batch in args.batches:
            cells.append(Cell(f"sweep/{optimizer}_b{batch}", "sweep", optimizer, batch))
    for optimizer in OPTIMIZERS:
        for batch in args.batches:
            cells += [Cell(f"train/{optimizer}_b{batch}_s{seed}", "train", optimizer, batch, seed)
                      for seed in args.seeds]
    largest = max(args.batches)
    for variant, extra in ABLATIONS.items():
        cells += [Cell(f"ablation/{variant}_s{seed}", "ablation", "lars", largest, seed,
                       variant, extra) for seed in args.seeds]
    return cells


def selected(cells: list[Cell], args) -> list[Cell]:
    """The cells this sitting may run (--only, --cells); the report always covers the grid."""
    return [c for c in cells if (not args.only or c.kind in args.only) and (
        not args.cells or any(fnmatch.fnmatchcase(c.name, p) for p in args.cells))]


def tuned(results: dict, optimizer: str, batch: int) -> dict | None:
    sweep = results.get(f"sweep/{optimizer}_b{batch}")
    return sweep["best"] if sweep else None


def command(cell: Cell, args, *, out: Path, data: Path, epochs: int,
            results: dict) -> list[str] | None:
    """The cell's command line, or None while the sweep it takes its LR from is not done."""
    common = DATA + QUIET_CHECKPOINTS + [
        f"data.path={data}", f"data.image_size={args.image_size}",
        f"trainer.global_batch_size={cell.batch}", f"optim={cell.optimizer}",
        f"run.output_dir={out / cell.name}"]
    if cell.kind == "sweep":
        low, high = sweep_range(cell.optimizer, cell.batch)
        short = sweep_epochs(epochs)
        # Warmup 0 or a third of the short budget: the fine stage adds the neighbours.
        warmups = [0.0, round(short / 3, 2)]
        return [sys.executable, str(REPO / "launch/tune.py"), *common,
                f"trainer.epochs={short}", f"tune.lr_min={low:.6g}",
                f"tune.lr_max={high:.6g}", f"tune.warmup_epochs=[{warmups[0]},{warmups[1]}]"]
    best = tuned(results, cell.optimizer, cell.batch)
    if best is None:
        return None
    return [sys.executable, str(REPO / "launch/run.py"), *common, *cell.extra,
            f"trainer.epochs={epochs}", f"trainer.seed={cell.seed}",
            f"optim.lr={best['lr']:.6g}", f"optim.warmup_epochs={run_warmup(best, epochs=epochs):.4g}"]


def sweep_epochs(epochs: int) -> int:
    """A sweep trial's budget: a third of the full run's."""
    return max(2, round(epochs / 3))


def run_warmup(best: dict, *, epochs: int) -> float:
    """The sweep's warmup was chosen on its shorter budget: the full run keeps its share."""
    return best["warmup_epochs"] * epochs / sweep_epochs(epochs)


def run_cell(cell: Cell, argv: list[str], *, out: Path) -> float:
    folder = out / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with (folder / "command.log").open("w") as log:
        log.write(" ".join(argv) + "\n")
        log.flush()
        result = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - started
    if result.returncode != 0:
        raise SystemExit(f"[curve] {cell.name} failed (exit {result.returncode}); its output: "
                         f"{folder / 'command.log'}")
    return seconds


def cell_result(cell: Cell, out: Path) -> dict:
    """What the report reads from a finished cell's summary in OUT."""
    data = json.loads(cell.done_file(out).read_text())
    if cell.kind == "sweep":
        return {"best": data["best"], "trials": sum(st["num_trials"] for st in data["stages"]),
                "trial_epochs": data["total_trial_epochs"]}
    curve = [h["val_top1"] for h in data["history"]]
    return {"val_top1": data["val_top1"], "best_val_top1": max(curve), "curve": curve,
            "train_loss": data["train_loss"], "global_steps": data["global_steps"],
            "skipped_steps": data.get("skipped_steps", 0)}


def load_ledger(path: Path, settings: dict) -> dict:
    """The finished cells of the grid `settings` describe, or an empty ledger for it. A
    ledger of another grid (data, image size, epoch budget) is refused, not mixed in."""
    if not path.exists():
        return {"settings": settings, "cells": {}}
    ledger = json.loads(path.read_text())
    differ = {k: {"ledger": ledger["settings"].get(k), "this run": v}
              for k, v in settings.items() if ledger["settings"].get(k) != v}
    if differ:
        raise SystemExit(f"[curve] {path} holds the cells of another grid ({differ}); "
                         "pass --ledger with a new file for this one")
    return ledger


def record(cell: Cell, *, out: Path, seconds: float | None) -> dict:
    """A ledger entry for a cell whose run folder in OUT is finished."""
    finished = datetime.fromtimestamp(cell.done_file(out).stat().st_mtime, timezone.utc)
    return {"result": cell_result(cell, out), "seconds": seconds,
            "finished": finished.isoformat(timespec="minutes"), "from": "run"}


def absorb(cells: list[Cell], ledger: dict, *, out: Path, costs: dict) -> list[str]:
    """Add the finished run folders in OUT that the ledger lacks (a cell stopped between
    its run and the ledger's write, or run before there was a ledger)."""
    added = [c for c in cells if c.name not in ledger["cells"] and c.done_file(out).exists()]
    for cell in added:
        ledger["cells"][cell.name] = record(cell, out=out, seconds=costs.get(cell.name))
    return [c.name for c in added]


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    return f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f} (n={len(values)})"


def report(cells: list[Cell], *, ledger: dict, out: Path, args, epochs: int,
           train_samples: int) -> None:
    entries = ledger["cells"]
    results = {c.name: entries[c.name]["result"] for c in cells if c.name in entries}
    costs = {n: entries[n]["seconds"] for n in results if entries[n]["seconds"] is not None}
    largest = max(args.batches)
    lines = [f"large-batch curve: small_resnet, {args.image_size} px, {train_samples} training "
             f"images, {epochs} epochs for every batch ({train_samples // largest} steps/epoch "
             f"at batch {largest}); mean ± half-range over seeds of the final and best-epoch "
             "val_top1", "",
             "| optimizer | batch | steps | tuned lr | tuned warmup (epochs) "
             "| sweep trials (trial-epochs) | final val_top1 | best-epoch val_top1 |",
             "|---|---|---|---|---|---|---|---|"]
    curve = {}
    for optimizer in OPTIMIZERS:
        for batch in args.batches:
            sweep = results.get(f"sweep/{optimizer}_b{batch}")
            runs = [results.get(f"train/{optimizer}_b{batch}_s{s}") for s in args.seeds]
            runs = [r for r in runs if r]
            tuned_cols = "- | - | -"
            if sweep:
                best = sweep["best"]
                tuned_cols = (f"{best['lr']:.4g} | {run_warmup(best, epochs=epochs):.3g} | "
                              f"{sweep['trials']} ({sweep['trial_epochs']})")
            lines.append(f"| {optimizer} | {batch} | {epochs * (train_samples // batch)} | "
                         f"{tuned_cols} | {spread([r['val_top1'] for r in runs])} | "
                         f"{spread([r['best_val_top1'] for r in runs])} |")
            if runs:
                curve.setdefault(optimizer, []).append(
                    (batch, [r["best_val_top1"] for r in runs]))
    lines += ["", f"ablations at batch {largest} (LARS, its tuned LR and warmup):", "",
              "| variant | final val_top1 | best-epoch val_top1 | fp16 skipped steps |",
              "|---|---|---|---|"]
    for variant in ("fp32", *ABLATIONS):
        names = ([f"train/lars_b{largest}_s{s}" for s in args.seeds] if variant == "fp32"
                 else [f"ablation/{variant}_s{s}" for s in args.seeds])
        runs = [results[n] for n in names if results.get(n)]
        lines.append(f"| {variant} | {spread([r['val_top1'] for r in runs])} | "
                     f"{spread([r['best_val_top1'] for r in runs])} | "
                     f"{sum(r['skipped_steps'] for r in runs) if runs else '-'} |")
    lines += ["", "the brief's claims (means of best-epoch val_top1, points):", ""]
    lines += claims(results, args=args)
    done = sum(1 for r in results.values() if r)
    total = sum(costs.values())
    lines += ["", f"cells done: {done}/{len(cells)}; their run time: {total / 3600:.2f} h "
              f"(over all sittings; per kind: " + ", ".join(
                  f"{kind} {sum(v for k, v in costs.items() if k.startswith(kind)) / 60:.0f} min"
                  for kind in ("sweep", "train", "ablation")) + ")",
              time_left(cells, results=results, costs=costs)]
    recorded = [n for n in results if entries[n]["from"] != "run"]
    if recorded:
        lines.append(f"{len(recorded)} cells are transcribed from an earlier record (their "
                     "run folders were lost; no per-epoch curve): see each one's \"from\" "
                     "in the ledger")
    write_report(out, name="large_batch_curve", lines=lines,
                 data={"args": {k: v for k, v in vars(args).items() if k != "out"},
                       "epochs": epochs, "train_samples": train_samples,
                       "cell_seconds": costs, "cells": results})
    if curve:
        plot(curve, path=out / "large_batch_curve.png", epochs=epochs)


def time_left(cells: list[Cell], *, results: dict, costs: dict) -> str:
    """The cells not done, each timed at the mean measured cost of its kind at its batch.
    The kinds: a sweep; a training run in fp32 (an exclusion ablation is one); and a run in
    each ablation's precision, whose kernels differ (fp16 has no native arithmetic on a CPU
    and ran 5x slower than fp32 here; the measured costs are in BENCHMARKS.md). A precision
    not yet timed takes the fp32 run's cost. A batch not yet timed for that kind takes the
    nearest timed batch's cost, the smaller one on a tie: an underestimate for a smaller
    batch, which runs the same images in more, less efficient steps."""
    left = [c for c in cells if not results.get(c.name)]
    if not left:
        return "cells left: none"

    def kind(cell):
        if cell.kind == "sweep":
            return "sweep"
        precision = next((o.split("=", 1)[1] for o in cell.extra if o.startswith("precision=")),
                         "fp32")
        return "run" if precision == "fp32" else f"{precision} run"

    timed: dict[str, dict[int, list[float]]] = {}
    for cell in cells:
        if cell.name in costs:
            timed.setdefault(kind(cell), {}).setdefault(cell.batch, []).append(costs[cell.name])
    if not (timed.get("sweep") and timed.get("run")):
        return f"cells left: {len(left)}; not timed until a sweep and a run have been"

    def priced_as(cell):
        return kind(cell) if kind(cell) in timed else "run"

    def cost(cell):
        batches = timed[priced_as(cell)]
        nearest = min(batches, key=lambda b: (abs(math.log2(b / cell.batch)), b))
        return statistics.mean(batches[nearest])

    hours = sum(cost(c) for c in left) / 3600
    means = "; ".join(f"{k} " + ", ".join(f"{b}: {statistics.mean(v) / 60:.0f}"
                                          for b, v in sorted(timed[k].items()))
                      for k in ("sweep", "run", *sorted(set(timed) - {"sweep", "run"})))
    untimed = sorted({(kind(c), c.batch) for c in left
                      if kind(c) in timed and c.batch not in timed[kind(c)]})
    as_fp32 = sorted({kind(c) for c in left if kind(c) not in timed})
    sweeps = sum(c.kind == "sweep" for c in left)
    runs = len(left) - sweeps
    return (f"cells left: {len(left)} ({sweeps} sweep{'s' * (sweeps != 1)}, {runs} "
            f"run{'s' * (runs != 1)}); at the mean cost of those timed at each batch "
            f"(min: {means})"
            + (f"; {', '.join(f'{k} {b}' for k, b in untimed)} at the nearest timed batch's"
               if untimed else "")
            + (f"; {', '.join(as_fp32)} at the fp32 run's" if as_fp32 else "")
            + f": about {hours:.1f} h more")


def claims(results: dict, *, args) -> list[str]:
    """The brief's four claims against what the finished cells measured."""
    def seeds(names):
        return [results[n]["best_val_top1"] for n in names if results.get(n)]

    def best(names):
        runs = seeds(names)
        return (statistics.mean(runs), (max(runs) - min(runs)) / 2) if runs else None

    largest, smaller = max(args.batches), [b for b in args.batches if b < max(args.batches)]
    cell = {(o, b): best([f"train/{o}_b{b}_s{s}" for s in args.seeds])
            for o in OPTIMIZERS for b in args.batches}
    lines = []

    def claim(text, value, goal, ok):
        verdict = "" if goal == "no goal" else f": {'holds' if ok else 'does not hold'}"
        lines.append(f"- {text}: " + ("not measured yet" if value is None else
                                      f"{value:+.1f} ({goal}{verdict})"))

    small = [cell[("sgd", b)][0] for b in smaller if cell[("sgd", b)]]
    sgd = cell[("sgd", largest)]
    gap = 100 * (sgd[0] - max(small)) if sgd and small else None
    claim(f"SGD at batch {largest} against its best smaller batch", gap, "goal <= -5",
          gap is not None and gap <= -5)
    small = [cell[(o, b)][0] for o in OPTIMIZERS for b in smaller if cell[(o, b)]]
    lars = cell[("lars", largest)]
    gap = 100 * (lars[0] - max(small)) if lars and small else None
    claim(f"LARS at batch {largest} against the best smaller-batch result", gap, "goal >= -1",
          gap is not None and gap >= -1)
    fp32 = seeds([f"train/lars_b{largest}_s{s}" for s in args.seeds])
    for variant, goal in (("bf16", "goal within 0.5"), ("fp16", "goal within 0.5"),
                          ("fp16_pure", "goal: every seed below fp32's lowest"),
                          ("no_exclusion", "no goal")):
        names = [f"ablation/{variant}_s{s}" for s in args.seeds]
        other = best(names)
        gap = 100 * (other[0] - lars[0]) if other and lars else None
        # "Outside the seed spread" read literally: the two ranges of seeds do not touch.
        ok = gap is not None and (
            abs(gap) <= 0.5 if variant in ("bf16", "fp16") else
            max(seeds(names)) < min(fp32) if variant == "fp16_pure" else True)
        claim(f"LARS {variant} against fp32 LARS at batch {largest}", gap, goal, ok)
    return lines


def plot(curve: dict, *, path: Path, epochs: int) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for optimizer, points in curve.items():
        batches = [b for b, _ in points]
        means = [statistics.mean(v) for _, v in points]
        low = [m - min(v) for m, (_, v) in zip(means, points, strict=True)]
        high = [max(v) - m for m, (_, v) in zip(means, points, strict=True)]
        ax.errorbar(batches, means, yerr=[low, high], marker="o", capsize=4,
                    label=f"{optimizer.upper()} (tuned LR, warmup)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    ax.set_ylabel("best-epoch val top-1 (mean, min-max over seeds)")
    ax.set_title(f"Large-batch curve, augmented digits, {epochs} epochs")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="the data and each cell's run folder (may be lost between sittings)")
    ap.add_argument("--ledger", type=Path, default=LEDGER,
                    help="every finished cell's result and cost (default: the committed "
                         "benchmarks/results/large_batch_curve_cells.json)")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--copies", type=int, default=94,
                    help="augmented copies of the digits train split (94: 136K images, "
                         "batch 4096 is 3%% of them)")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--min-steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=["sweep", "train", "ablation"])
    ap.add_argument("--cells", nargs="+", metavar="PATTERN",
                    help="only the cells whose names match one of these shell patterns, "
                         "e.g. 'train/lars_b4096_*'")
    ap.add_argument("--max-cells", type=int, default=None)
    ap.add_argument("--plan", action="store_true", help="print the cells and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve()
    ledger_path = args.ledger.resolve()
    # What fixes a cell's result besides its name: checked before the data is written.
    ledger = load_ledger(ledger_path, {"copies": args.copies, "image_size": args.image_size,
                                       "min_steps": args.min_steps,
                                       "largest_batch": max(args.batches)})
    data = out / "data"
    counts_file = out / "data_counts.json"
    if not counts_file.exists():
        from ingest.prepare import prepare

        print(f"[curve] writing {args.copies} augmented copies of digits to {data}", flush=True)
        counts = prepare(output=str(data), fmt="parquet", copies=args.copies,
                         image_size=args.image_size)
        write_json(counts_file, counts)
    counts = json.loads(counts_file.read_text())
    epochs = budget(train_samples=counts["train"], largest_batch=max(args.batches),
                    min_steps=args.min_steps)
    cells = plan(args)
    costs_file = out / "cell_seconds.json"  # OUT's own record, for absorb()
    costs = json.loads(costs_file.read_text()) if costs_file.exists() else {}
    added = absorb(cells, ledger, out=out, costs=costs)
    if added:
        print(f"[curve] added to the ledger from {out}: {', '.join(added)}", flush=True)
        write_json(ledger_path, ledger)
    done = ledger["cells"]
    todo = [c for c in selected(cells, args) if c.name not in done]
    print(f"[curve] {counts['train']} training images, {epochs} epochs per run; "
          f"{sum(c.name in done for c in cells)}/{len(cells)} cells done (ledger "
          f"{ledger_path}), {len(todo)} selected to run", flush=True)
    results = {name: entry["result"] for name, entry in done.items()}
    if args.plan:
        for cell in selected(cells, args):
            argv_ = command(cell, args, out=out, data=data, epochs=epochs, results=results)
            state = "done" if cell.name in done else "todo"
            print(f"{state} {cell.name}: " + (" ".join(argv_[1:]) if argv_ else "(after its sweep)"))
        return
    started = 0
    for cell in todo:
        if args.max_cells is not None and started >= args.max_cells:
            break
        argv_ = command(cell, args, out=out, data=data, epochs=epochs, results=results)
        if argv_ is None:
            print(f"[curve] {cell.name}: its sweep is not done, skipped", flush=True)
            continue
        started += 1
        print(f"[curve] {cell.name} ({started}/{len(todo)} this sitting) ...", flush=True)
        costs[cell.name] = run_cell(cell, argv_, out=out)
        write_json(costs_file, costs)
        done[cell.name] = record(cell, out=out, seconds=costs[cell.name])
        write_json(ledger_path, ledger)
        results[cell.name] = result = done[cell.name]["result"]
        what = (f"best lr {result['best']['lr']:.4g}, warmup {result['best']['warmup_epochs']:g}"
                if cell.kind == "sweep" else f"val_top1 {result['val_top1']:.4f}")
        print(f"[curve] {cell.name}: {what} in {costs[cell.name]:.0f} s", flush=True)
        report(cells, ledger=ledger, out=out, args=args, epochs=epochs,
               train_samples=counts["train"])
    report(cells, ledger=ledger, out=out, args=args, epochs=epochs, train_samples=counts["train"])


if __name__ == "__main__":
    main()
