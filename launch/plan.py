"""Plan gradient communication for a cluster and predict its scaling efficiency.

Usage:
    python launch/plan.py --experiment resnet50_imagenet_64k [link options]
    python launch/plan.py --gpus 1024 --gpus-per-node 8 --model resnet50 \
        [--intra-gbps 1200 --intra-latency-us 2 --inter-gbps 100 --inter-latency-us 10] \
        [--img-per-sec 2470 --batch-per-gpu 64] [--grad-bytes 2] [--segments 2] [--chunk-mb C] [--json PATH]

The model's per-tensor backward times are measured here on the CPU (hooks; the shape of
the distribution) and scaled so forward + backward take batch_per_gpu / img_per_sec, the
target GPU's compute time per step. Every algorithm (ring, tree, reduce_bcast, 2d) and
fusion threshold is simulated with its best segment split (comms/cost_model.py); the
table lists the best plan per algorithm, then the chosen plan and the predicted scaling
efficiency (compute-only step / predicted step). Prints the JSON path last when --json is
given. For the chosen reduce_bcast or 2d: run comms=hierarchical with comms.variant set
to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from comms.cost_model import (
    ALGORITHMS,
    CHUNKS_MB,
    ClusterShape,
    Link,
    choose_plan,
)
from comms.profile import profile_backward
from trainers.models import MODEL_NAMES, build_model

THRESHOLDS_MB = (0.5, 1, 2, 4, 8, 16, 25, 32, 64, 128, 256)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=None, help="a recipe in conf/experiment/")
    ap.add_argument("--gpus", type=int, default=None, help="total ranks (GPUs)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--model", choices=MODEL_NAMES, default=None, help="default resnet50")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--intra-gbps", type=float, default=1200.0, help="in-node Gbit/s (NVLink)")
    ap.add_argument("--intra-latency-us", type=float, default=2.0)
    ap.add_argument("--inter-gbps", type=float, default=100.0, help="per-node NIC Gbit/s")
    ap.add_argument("--inter-latency-us", type=float, default=10.0)
    ap.add_argument("--img-per-sec", type=float, default=2470.0,
                    help="one GPU's training throughput (default: A100 ResNet-50 AMP)")
    ap.add_argument("--batch-per-gpu", type=int, default=None, help="default 64")
    ap.add_argument("--grad-bytes", type=int, default=None, choices=(2, 4),
                    help="bytes per gradient element on the wire (2: fp16 compression; default 4)")
    ap.add_argument("--segments", type=int, default=None,
                    help="max segments (comms.segments; default 2)")
    ap.add_argument("--profile-image-size", type=int, default=112,
                    help="image side for the CPU backward profile")
    ap.add_argument("--chunk-mb", type=float, default=None,
                    help="comms.pipeline_chunk_mb to assume (default: the plan picks one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    recipe = recipe_settings(args.experiment) if args.experiment else {}
    defaults = {"gpus": None, "model": "resnet50", "batch_per_gpu": 64, "grad_bytes": 4,
                "segments": 2}
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, default))
    if args.gpus is None:
        ap.error("give --gpus or --experiment")
    if args.chunk_mb is not None and args.chunk_mb <= 0:
        ap.error(f"--chunk-mb must be > 0, got {args.chunk_mb}")
    if args.gpus < 1 or args.gpus_per_node < 1 or args.gpus % args.gpus_per_node:
        ap.error("--gpus must be a positive multiple of --gpus-per-node")
    return args


def recipe_settings(name: str) -> dict:
    """What the plan needs from conf/experiment/NAME.yaml."""
    from omegaconf import OmegaConf

    from job.config import CONF_DIR, compose_unchecked

    if not (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
        raise ValueError(f"--experiment: no recipe conf/experiment/{name}.yaml")
    cfg = OmegaConf.to_container(compose_unchecked([f"experiment={name}"]), resolve=True)
    trainer, comms = cfg["trainer"], cfg["comms"]
    gpus = trainer["max_workers"] or trainer["num_workers"]
    return {"gpus": gpus, "model": cfg["model"]["name"],
            "batch_per_gpu": trainer["global_batch_size"] // gpus,
            "grad_bytes": 2 if comms["compress"] in ("fp16", "bf16") else 4,
            "segments": comms["segments"]}


def model_profile(*, name: str, num_classes: int, image_size: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name=name, num_classes=num_classes)
    images = torch.randn(2, 3, image_size, image_size)
    labels = torch.randint(0, num_classes, (2,))
    return profile_backward(model, images=images, labels=labels, repeats=3)


def plan(args: argparse.Namespace) -> dict:
    profile = model_profile(name=args.model, num_classes=args.num_classes,
                            image_size=args.profile_image_size)
    compute_s = args.batch_per_gpu / args.img_per_sec
    measured = profile["forward_s"] + profile["backward_s"]
    forward_s = compute_s * profile["forward_s"] / measured
    scale = (compute_s - forward_s) / sum(profile["tensor_backward_s"])
    tensor_backward_s = [t * scale for t in profile["tensor_backward_s"]]
    tensor_bytes = [b // 4 * args.grad_bytes for b in profile["tensor_bytes"]]
    cluster = ClusterShape(
        num_nodes=args.gpus // args.gpus_per_node, ranks_per_node=args.gpus_per_node,
        intra=Link.from_bandwidth(latency_us=args.intra_latency_us, gbit_per_s=args.intra_gbps),
        inter=Link.from_bandwidth(latency_us=args.inter_latency_us, gbit_per_s=args.inter_gbps))
    choices = choose_plan(tensor_bytes=tensor_bytes, tensor_backward_s=tensor_backward_s,
                          forward_s=forward_s, cluster=cluster, thresholds_mb=THRESHOLDS_MB,
                          max_segments=args.segments,
                          chunks_mb=[args.chunk_mb] if args.chunk_mb else CHUNKS_MB)
    per_tensor = choose_plan(tensor_bytes=tensor_bytes, tensor_backward_s=tensor_backward_s,
                             forward_s=forward_s, cluster=cluster, thresholds_mb=[1e-6],
                             max_segments=len(tensor_bytes), algorithms=["ring"])[0]
    best_per_algorithm = {a: next(c for c in choices if c.algorithm == a).describe()
                          for a in ALGORITHMS if any(c.algorithm == a for c in choices)}
    return {"gpus": args.gpus, "gpus_per_node": args.gpus_per_node, "model": args.model,
            "gradient_mb": sum(tensor_bytes) / 2**20, "num_tensors": len(tensor_bytes),
            "compute_ms": compute_s * 1e3, "cluster": vars(args) | {"json": None},
            "chosen": choices[0].describe(), "best_per_algorithm": best_per_algorithm,
            "per_tensor_ring": per_tensor.describe()}


def print_plan(result: dict) -> None:
    print(f"{result['model']} on {result['gpus']} GPUs ({result['gpus_per_node']} per node): "
          f"{result['num_tensors']} gradient tensors, {result['gradient_mb']:.1f} MB, "
          f"compute {result['compute_ms']:.1f} ms/step")
    print(f"{'algorithm':<16} {'threshold MB':>12} {'chunk MB':>8} {'buckets':>7} "
          f"{'segments':>8} {'comm alone ms':>13} {'step ms':>8} {'efficiency':>10}")
    rows = [*result["best_per_algorithm"].values(), result["per_tensor_ring"]]
    for row in rows:
        name = row["algorithm"] if row is not result["per_tensor_ring"] else "ring/per-tensor"
        chunk = f"{row['chunk_mb']:g}" if row["chunk_mb"] else "whole"
        print(f"{name:<16} {row['threshold_mb']:>12g} {chunk:>8} {row['num_buckets']:>7} "
              f"{len(row['splits']) + 1:>8} {row['comm_alone_s'] * 1e3:>13.2f} "
              f"{row['step_s'] * 1e3:>8.2f} {row['efficiency']:>10.1%}")
    chosen = result["chosen"]
    chunk = (f"comms.pipeline_chunk_mb={chosen['chunk_mb']:g}, " if chosen["chunk_mb"]
             else "")
    print(f"chosen: {chosen['algorithm']}, comms.fusion_threshold_mb={chosen['threshold_mb']:g}, "
          f"{chunk}segments split at buckets {list(chosen['splits'])}; predicted scaling efficiency "
          f"{chosen['efficiency']:.1%} (step {chosen['step_s'] * 1e3:.2f} ms vs compute "
          f"{result['compute_ms']:.2f} ms)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = plan(args)
    print_plan(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(args.json)


if __name__ == "__main__":
    main()
