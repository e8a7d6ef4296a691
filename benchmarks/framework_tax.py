"""Framework tax: the default job run several ways on the same CPUs, interleaved, so the
ratios come from one sitting of one machine.

- `plain_ddp`: benchmarks/plain_ddp.py, the job as a plain DDP script (DataLoader,
  DistributedSampler, same per-sample augmentation, model, LARS, schedule, batch, seed);
- `run_py`: `python launch/run.py` as a user runs it (`data.preprocess_on=auto`, which on
  a small cluster preprocesses the in-memory digits inside the workers);
- `run_py_pipeline`: `launch/run.py data.preprocess_on=tasks`: the same with the Ray Data
  pipeline's map_batches tasks, to split the tax into the pipeline and the rest;
- `run_py_in_workers` (not run unless asked): `data.preprocess_on=workers`, for a cluster
  where `auto` would choose the tasks.

For each: img/s per epoch after the first (each training loop's own timing, mean of
epochs 2..N), the time from the command's start to its first optimizer step, the wall
time, and for raylars the start-up phases from summary.json (`startup_s`).

    python benchmarks/framework_tax.py --repeats 2 --out benchmarks/results
    python benchmarks/framework_tax.py --model resnet50 --image-size 64 --epochs 3
    python benchmarks/framework_tax.py --workers 1 --variants plain_ddp run_py_in_workers

`--workers 1` on a 2-core machine leaves a core beside the one training process, as a GPU
node leaves host cores beside its GPUs' processes: what is left of the tax there is not
Ray's control plane sharing the training cores. (`run_py_in_workers`: with a CPU spare,
`data.preprocess_on=auto` would move the shift to Ray Data tasks on it, unlike plain DDP.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_util import write_report

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("plain_ddp", "run_py", "run_py_pipeline", "run_py_in_workers")
DEFAULT_VARIANTS = VARIANTS[:3]


def _run_py(args, out: Path, *extra: str) -> dict:
    command = [sys.executable, str(REPO / "launch/run.py"), f"run.output_dir={out}",
               f"trainer.epochs={args.epochs}", f"model={args.model}",
               f"data.image_size={args.image_size}", f"trainer.num_workers={args.workers}",
               *extra]
    if args.epochs <= 2:
        command.append("optim.warmup_epochs=0")
    started = time.time()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    summary = json.loads((out / "summary.json").read_text())
    startup = summary["startup_s"]
    rates = [h["epoch_images_per_sec"] for h in summary["history"]]
    return {"epoch_images_per_sec": rates, "wall_seconds": wall,
            "time_to_first_step_s": startup["run_start"] + startup["to_first_step"] - started,
            "startup_s": {"imports_and_config": startup["run_start"] - started,
                          **{k: v for k, v in startup.items() if k != "run_start"}},
            "val_top1": summary["val_top1"], "train_loss": summary["train_loss"]}


def _plain(args, out: Path) -> dict:
    command = [sys.executable, str(REPO / "benchmarks/plain_ddp.py"), "--json", str(out),
               "--epochs", str(args.epochs), "--model", args.model,
               "--image-size", str(args.image_size), "--workers", str(args.workers)]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    return {"epoch_images_per_sec": [e["images_per_sec"] for e in result["epochs"]],
            "wall_seconds": result["wall_seconds"],
            "time_to_first_step_s": result["time_to_first_step_s"],
            "val_top1": result["epochs"][-1]["val_top1"],
            "train_loss": result["epochs"][-1]["train_loss"]}


def run_variant(name: str, args, tmp: Path, repeat: int) -> dict:
    out = tmp / f"{name}-{repeat}"
    if name == "plain_ddp":
        return _plain(args, out.with_suffix(".json"))
    extra = {"run_py_pipeline": ("data.preprocess_on=tasks",),
             "run_py_in_workers": ("data.preprocess_on=workers",)}.get(name, ())
    return _run_py(args, out, *extra)


def summarise(runs: dict) -> dict:
    """Per variant: median over repeats of (mean img/s over epochs 2..N), time to first
    step and wall; and each ratio to plain DDP."""
    table = {}
    for name, results in runs.items():
        steady = [statistics.mean(r["epoch_images_per_sec"][1:] or r["epoch_images_per_sec"])
                  for r in results]
        table[name] = {"images_per_sec": statistics.median(steady),
                       "images_per_sec_runs": [round(v, 1) for v in steady],
                       "time_to_first_step_s": statistics.median(
                           r["time_to_first_step_s"] for r in results),
                       "wall_seconds": statistics.median(r["wall_seconds"] for r in results),
                       "val_top1": [r["val_top1"] for r in results]}
    base = table["plain_ddp"]
    for row in table.values():
        row["images_per_sec_ratio"] = row["images_per_sec"] / base["images_per_sec"]
        row["wall_ratio"] = row["wall_seconds"] / base["wall_seconds"]
        # Each repeat against the plain run next to it: the machine's drift between
        # repeats cancels in these, not in the ratio of medians.
        row["paired_ratios"] = [round(v / b, 3) for v, b in
                                zip(row["images_per_sec_runs"], base["images_per_sec_runs"], strict=True)]
        row["paired_ratio_median"] = statistics.median(row["paired_ratios"])
    return table


def report_lines(table: dict, runs: dict, args) -> list[str]:
    lines = [f"framework tax: {args.model} at {args.image_size}px, {args.workers} workers, "
             f"{args.epochs} epochs, "
             f"{args.repeats} interleaved repeats (medians)", "",
             "| what | img/s (epochs 2..N) | x plain DDP | x plain DDP, per repeat (median) "
             "| first step (s) | wall (s) | x wall |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['images_per_sec']:.0f} {row['images_per_sec_runs']} | "
                     f"{row['images_per_sec_ratio']:.2f} | {row['paired_ratios']} "
                     f"({row['paired_ratio_median']:.2f}) | {row['time_to_first_step_s']:.1f} | "
                     f"{row['wall_seconds']:.1f} | {row['wall_ratio']:.2f} |")
    last = next(name for name in reversed(runs) if name != "plain_ddp")
    lines += ["", f"start-up of the last {last} (s): " + ", ".join(
        f"{k} {v}" for k, v in runs[last][-1]["startup_s"].items())]
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--model", default="small_resnet")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="training processes (ranks)")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if "plain_ddp" not in args.variants or len(args.variants) < 2:
        ap.error("--variants: the ratios need plain_ddp and at least one run_py variant")
    runs: dict[str, list] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in args.variants:  # interleaved: drift hits every variant alike
                print(f"[framework tax] repeat {repeat + 1}/{args.repeats}: {name}", flush=True)
                runs[name].append(run_variant(name, args, Path(tmp), repeat))
    table = summarise(runs)
    data = {"args": vars(args), "table": table, "runs": runs}
    suffix = "" if args.model == "small_resnet" else f"_{args.model}_{args.image_size}"
    suffix += "" if args.workers == 2 else f"_{args.workers}workers"
    write_report(Path(args.out), name=f"framework_tax{suffix}",
                 lines=report_lines(table, runs, args), data=data)
    return data


if __name__ == "__main__":
    main()
