"""Checkpoint stall: how much longer a training step is when it writes a checkpoint, with
Ray Train's synchronous upload and with its asynchronous one (trainer.checkpoint_upload).

A real Ray Train run on a test-cluster-like setup (a CPU-less head and `--nodes` worker
nodes of `--cpus-per-node` CPUs on loopback, or `--address` to join one): `--workers`
DDP workers train `--model` on a fixed random batch. Steps come in windows of `--window`
steps; each window's first step reports, and the windows cycle through three kinds,
interleaved so that all three see the same machine load:

- `none`: a metrics-only `ray.train.report` (the barrier a checkpoint step pays anyway);
- `sync`: a checkpoint (model + optimizer state, rank 0 writes) through job/loop.py's
  `_report` with `upload="sync"`: the step returns once Ray has copied it into the run
  directory;
- `async`: the same with `upload="async"`: the step returns once the file is written
  locally; Ray copies it in a background thread.

Per kind: the median time of the reporting step, and of the whole window (which also pays
for a background copy that competes with the steps after it). The stall of a mode is its
median minus that of `none`.

    python benchmarks/checkpoint_stall.py --json benchmarks/results/checkpoint_stall.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on loopback

from bench_util import write_json  # noqa: E402

KINDS = ("none", "sync", "async")


def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from job.loop import _quiet_train_report_logs, _report
    from trainers.models import build_model

    _quiet_train_report_logs()

    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    model = ray.train.torch.prepare_model(
        build_model(name=config["model"], num_classes=100, in_channels=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(config["batch"], 3, config["image_size"], config["image_size"])
    labels = torch.randint(0, 100, (config["batch"],))
    rank = ray.train.get_context().get_world_rank()
    records = []
    for window in range(config["windows"]):
        kind = KINDS[window % len(KINDS)]
        for position in range(config["window"]):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            if position == 0:
                state = None
                if kind != "none" and rank == 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                name = "" if kind == "none" else f"checkpoint_{window:04d}"
                _report({"window": window}, state, name, upload=kind if name else "sync")
            records.append({"window": window, "kind": kind, "position": position,
                            "seconds": time.perf_counter() - started})
    if rank == 0:  # the driver reads them (same machine)
        Path(config["records"]).write_text(json.dumps(records))


def summarize(records: list[dict], *, warmup_windows: int) -> dict:
    """Medians per kind of the reporting step and of the window, and the stalls."""
    kept = [r for r in records if r["window"] >= warmup_windows]
    out = {}
    for kind in KINDS:
        steps = [r["seconds"] for r in kept if r["kind"] == kind and r["position"] == 0]
        windows: dict[int, float] = {}
        for r in kept:
            if r["kind"] == kind:
                windows[r["window"]] = windows.get(r["window"], 0.0) + r["seconds"]
        out[kind] = {"report_step_s": statistics.median(steps),
                     "window_s": statistics.median(windows.values()),
                     "num_windows": len(windows)}
    plain = [r["seconds"] for r in kept if r["position"] > 0]
    out["plain_step_s"] = statistics.median(plain)
    for kind in ("sync", "async"):
        out[kind]["stall_s"] = out[kind]["report_step_s"] - out["none"]["report_step_s"]
        out[kind]["window_overhead_s"] = out[kind]["window_s"] - out["none"]["window_s"]
        out[kind]["stall_in_plain_steps"] = out[kind]["stall_s"] / out["plain_step_s"]
    out["async_over_sync_stall"] = out["async"]["stall_s"] / out["sync"]["stall_s"]
    return out


def start_cluster(args):
    """A Cluster like the test cluster's: a CPU-less head and CPU worker nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    for node in range(args.nodes):
        cluster.add_node(num_cpus=args.cpus_per_node, node_ip_address=f"127.0.0.{6 + node}")
    cluster.wait_for_nodes()
    return cluster


def run(args) -> dict:
    import ray
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cluster = None if args.address else start_cluster(args)
    ray.init(address=args.address or cluster.address)
    try:
        with tempfile.TemporaryDirectory(prefix="checkpoint-stall-") as storage:
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={"model": args.model, "batch": args.batch,
                                   "image_size": args.image_size, "windows": args.windows,
                                   "window": args.window, "threads": args.threads,
                                   "records": str(Path(storage) / "records.json")},
                scaling_config=ScalingConfig(num_workers=args.workers),
                run_config=RunConfig(name="stall", storage_path=storage,
                                     checkpoint_config=CheckpointConfig(num_to_keep=2),
                                     logging_config=LoggingConfig(log_level="WARNING")))
            trainer.fit()
            sizes = [p.stat().st_size for p in Path(storage).rglob("state.pt")]
            records = json.loads((Path(storage) / "records.json").read_text())
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return {"config": vars(args), "checkpoint_bytes": max(sizes, default=None),
            "summary": summarize(records, warmup_windows=len(KINDS)), "records": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--window", type=int, default=2, help="steps per window")
    parser.add_argument("--windows", type=int, default=30,
                        help="windows in all (the first of each kind is warm-up)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--address", default=None, help="join this Ray cluster instead")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    data = run(args)
    summary = data["summary"]
    for kind in KINDS:
        print(f"{kind:>5}: report step {summary[kind]['report_step_s']:.3f} s, "
              f"window {summary[kind]['window_s']:.3f} s", flush=True)
    print(f"plain step {summary['plain_step_s']:.3f} s; stall sync "
          f"{summary['sync']['stall_s']:.3f} s, async {summary['async']['stall_s']:.3f} s "
          f"(async/sync {summary['async_over_sync_stall']:.2f}); checkpoint "
          f"{(data['checkpoint_bytes'] or 0) / 2**20:.0f} MiB", flush=True)
    if args.json:
        write_json(args.json, data)


if __name__ == "__main__":
    main()
