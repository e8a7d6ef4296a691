"""Large-batch convergence study: what LARS, warmup and mixed precision buy (the brief's
problem 1), on an augmented digits set written by `ingest.prepare`.

Usage:
    python benchmarks/large_batch.py --out DIR [--copies 4] [--epochs 10]
        [--small-batch 32] [--large-batch 256] [--only NAME ...] [hydra overrides ...]

Every run trains the same model for the same epochs on the same Parquet data, through
`job.trainer.run_training` (Ray Train workers fed by the Ray Data pipeline), on one embedded
cluster. Runs: small-batch SGD (the baseline); large-batch SGD with the LR scaled
linearly and warmup; large-batch LARS with warmup in fp32, mixed fp16, bf16 and pure
fp16; and LARS without the bias/BN exclusion. Writes DIR/large_batch.md (table),
DIR/large_batch.json and DIR/large_batch.png (val_top1 per epoch), and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_util import pyplot, save_figure, write_report

from ingest.prepare import prepare
from job.config import compose
from job.session import start_ray
from job.trainer import run_training

# The same warmup for every run; digits are 1-channel.
COMMON = ["data=parquet", "data.channels=1", "data.mean=[0.5]", "data.std=[0.5]",
          "data.augment=shift", "data.val_crop_fraction=1.0", "optim.warmup_epochs=2",
          "trainer.checkpoint_every_epochs=1000", "trainer.num_checkpoints_to_keep=1"]


def runs(*, small: int, large: int, sgd_lr: float, lars_lr: float) -> dict[str, list[str]]:
    scaled = sgd_lr * large / small  # Goyal et al.: LR proportional to batch
    big = [f"trainer.global_batch_size={large}"]
    lars = big + ["optim=lars", f"optim.lr={lars_lr}"]
    return {
        "sgd_small": [f"trainer.global_batch_size={small}", "optim=sgd", f"optim.lr={sgd_lr}"],
        "sgd_large_scaled": big + ["optim=sgd", f"optim.lr={scaled}"],
        "lars_large_fp32": lars,
        "lars_large_fp16": lars + ["precision=fp16"],
        "lars_large_bf16": lars + ["precision=bf16"],
        "lars_large_fp16_pure": lars + ["precision=fp16_pure"],
        "lars_large_no_exclusion": lars + ["optim.exclude_bn_bias=false"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--small-batch", type=int, default=32)
    parser.add_argument("--large-batch", type=int, default=256)
    parser.add_argument("--sgd-lr", type=float, default=0.05)
    parser.add_argument("--lars-lr", type=float, default=10.0)
    parser.add_argument("--only", nargs="*", help="run only these names")
    args, overrides = parser.parse_known_args(argv)
    data = args.out / "data"
    if not data.exists():
        counts = prepare(output=str(data), fmt="parquet", copies=args.copies,
                         image_size=args.image_size)
        print(f"[large_batch] wrote {counts} images to {data}", flush=True)
    base = COMMON + [f"data.path={data}", f"data.image_size={args.image_size}",
                     f"trainer.epochs={args.epochs}"] + overrides
    plan = runs(small=args.small_batch, large=args.large_batch, sgd_lr=args.sgd_lr,
                lars_lr=args.lars_lr)
    selected = {name: o for name, o in plan.items() if not args.only or name in args.only}
    configs = {name: compose(base + o + [f"run.output_dir={args.out / name}"])
               for name, o in selected.items()}  # every config checked before any run
    start_ray(next(iter(configs.values())))
    results = {}
    for name, config in configs.items():
        summary = run_training(config)
        results[name] = {"overrides": selected[name], "val_top1": summary["val_top1"],
                         "train_loss": summary["train_loss"],
                         "skipped_steps": summary["skipped_steps"],
                         "curve": [r["val_top1"] for r in summary["history"]],
                         "wall_seconds": summary["wall_seconds"]}
        print(f"[large_batch] {name}: val_top1 {summary['val_top1']:.4f}", flush=True)
        report(results, out=args.out, base=base, args=args)


def report(results: dict, *, out: Path, base: list[str], args) -> None:
    lines = ["| run | batch | val_top1 | vs sgd_small (pt) | train_loss | fp16 skipped steps |",
             "|---|---|---|---|---|---|"]
    baseline = results.get("sgd_small", {}).get("val_top1")
    for name, r in results.items():
        batch = args.small_batch if name == "sgd_small" else args.large_batch
        gap = f"{100 * (r['val_top1'] - baseline):+.1f}" if baseline is not None else "-"
        lines.append(f"| {name} | {batch} | {r['val_top1']:.4f} | {gap} | "
                     f"{r['train_loss']:.4f} | {r['skipped_steps']} |")
    lines.append(f"\n{args.epochs} epochs each; common overrides: {' '.join(base)}")
    write_report(out, name="large_batch", lines=lines, data=results)
    plot_curves(results, path=out / "large_batch.png")


def plot_curves(results: dict, *, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(8, 5))
    for name, r in results.items():
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1")
    ax.set_title("Large-batch study on augmented digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
