"""Time gradient synchronisation of a model's real gradient shapes on real gloo ranks.

Usage:
    python benchmarks/comms_bench.py --workers 4 --model resnet50 [--json PATH] [--repeats 5]
        [--ranks-per-node 2] [--threshold-mb 25] [--segments 2] [--chunk-mb 4]
        [--step-batch 4 --step-image-size 64]
        [--emulate-hosts 2 --rate-mbit R [--delay-ms D]]

Every rank is a separate process (gloo over TCP). Figures are medians over interleaved
repeats (one repeat runs every case once, in turn, so load drift hits all alike); each
sample is the slowest rank's time.

Communication only (the model's gradient shapes, gradients already computed):
  per_tensor_ms     one all_reduce per gradient tensor (no fusion), all launched at once
  fused_ms          comms=fused: the fusion plan's buckets, one all_reduce each, then /P
  hierarchical_ms   comms=hierarchical over --ranks-per-node groups (or emulated hosts)
  flat_floor_ms     one preallocated all_reduce of the same bytes: the transport's floor
Synchronisation inside backward (a module with the model's parameter shapes whose backward
costs only a fill, so the figure is the sync's added time: step minus backward alone):
  ddp_ms, fused_overlap_ms, hierarchical_overlap_ms
A full training step (forward, backward, sync, LARS step) on random images:
  step_ddp_ms, step_ours_ms (comms=fused), step_hierarchical_ms
Cost model: alpha from small and beta from large ring allreduces (1 KB .. 100 MB) on this
group, then predicted per_tensor/fused/hierarchical/flat_floor next to the measured
figures (per_tensor/fused: launched together, gloo's two threads overlapping their
latencies; hierarchical: its chunks through the stage pipeline of its variant,
reduce_bcast or 2d).

--emulate-hosts H puts the ranks of each emulated host in its own network namespace
(benchmarks/emulated_hosts.py); the namespaces are joined through a private switch
namespace by veth pairs whose egress is shaped by tc (tbf for --rate-mbit). --delay-ms
uses tc netem where the kernel has it; otherwise the switch is benchmarks/delay_relay.py, a user-space switch that holds every
frame D ms (the result's `delay_via` says which). Needs root; it stops with a message
saying what is missing otherwise. Addresses are private 10.213.0.x inside those
namespaces only; nothing is reachable from outside.

The pieces: comms_cases.py (what is timed), comms_predict.py (calibration and the cost
model's predictions), emulated_hosts.py (the namespaces); run this script, not those.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from bench_util import write_json
from comms_cases import comm_cases, interleaved, overlap_cases, step_cases
from comms_predict import add_ratios, calibrate_and_predict
from emulated_hosts import EmulatedHosts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ranks-per-node", type=int, default=None,
                    help="hierarchy for comms=hierarchical (default: workers/2, or per host)")
    ap.add_argument("--threshold-mb", type=float, default=25.0)
    ap.add_argument("--segments", type=int, default=2)
    ap.add_argument("--variant", default="auto", choices=("auto", "reduce_bcast", "2d"),
                    help="comms.variant of the hierarchical sync")
    ap.add_argument("--chunk-mb", type=float, default=4.0,
                    help="comms.pipeline_chunk_mb of the hierarchical sync")
    ap.add_argument("--step-batch", type=int, default=4)
    ap.add_argument("--step-image-size", type=int, default=64)
    ap.add_argument("--no-step", action="store_true", help="skip the full-step figures")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--emulate-hosts", type=int, default=0)
    ap.add_argument("--rate-mbit", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    # Internal: set by the launcher for each rank process.
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--master", default="127.0.0.1:0", help=argparse.SUPPRESS)
    ap.add_argument("--host-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.delay_ms < 0 or args.rate_mbit < 0:
        ap.error("--delay-ms and --rate-mbit must be >= 0")
    if args.delay_ms and not args.emulate_hosts:
        ap.error("--delay-ms needs --emulate-hosts")
    if args.emulate_hosts and args.workers % args.emulate_hosts:
        ap.error("--workers must be a multiple of --emulate-hosts")
    return args


# ---- launcher ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace, argv: list[str]) -> dict:
    """Start one process per rank (inside its host's namespace when emulating)."""
    hosts = EmulatedHosts(args) if args.emulate_hosts else None
    master_host = hosts.address(0) if hosts else "127.0.0.1"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        procs = []
        try:
            if hosts:
                hosts.create()
            per_host = args.workers // max(1, args.emulate_hosts)
            for rank in range(args.workers):
                host = rank // per_host if hosts else 0
                command = [sys.executable, __file__, *argv, "--rank", str(rank),
                           "--master", f"{master_host}:{port}", "--host-index", str(host),
                           "--out", str(out)]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                if hosts:
                    command = ["ip", "netns", "exec", hosts.namespace(host), *command]
                    env["GLOO_SOCKET_IFNAME"] = hosts.interface(host)
                procs.append(subprocess.Popen(command, env=env))
            codes = [proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            if hosts:
                hosts.destroy()
        if any(codes):
            raise SystemExit(f"a rank failed: exit codes {codes}")
        result = json.loads(out.read_text())
        result["delay_via"] = hosts.delay_via if hosts else None
        return result


# ---- inside each rank -------------------------------------------------------------------
def rank_main(args: argparse.Namespace) -> None:
    host, port = args.master.rsplit(":", 1)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=args.rank,
                            world_size=args.workers, timeout=datetime.timedelta(minutes=10))
    topology, shapes, result = describe_run(args)
    plan = measure(args, topology=topology, shapes=shapes, result=result)
    result.update(calibrate_and_predict(args, topology=topology, shapes=shapes, plan=plan,
                                        variant=result["hierarchical_variant"]))
    add_ratios(result)
    if args.rank == 0:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    dist.barrier()
    dist.destroy_process_group()


def describe_run(args: argparse.Namespace):
    """The topology, the model's gradient shapes, and the result's header."""
    from comms.sync import choose_variant, discover_topology
    from trainers.models import build_model

    if args.emulate_hosts:
        topology = discover_topology(ranks_per_node=None, node_key=f"host{args.host_index}")
    else:
        topology = discover_topology(ranks_per_node=args.ranks_per_node or max(1, args.workers // 2))
    shapes = [p.shape for p in build_model(name=args.model, num_classes=1000).parameters()]
    result = {"workers": args.workers, "model": args.model, "topology": topology.describe(),
              "hierarchical_variant": choose_variant(requested=args.variant, topology=topology,
                                                    backend="gloo"),
              "threshold_mb": args.threshold_mb, "segments": args.segments,
              "chunk_mb": args.chunk_mb,
              "repeats": args.repeats, "threads": args.threads,
              "emulate_hosts": args.emulate_hosts, "rate_mbit": args.rate_mbit,
              "delay_ms": args.delay_ms, "gradient_mb": sum(4 * torch.Size(s).numel()
                                                           for s in shapes) / 2**20,
              "num_tensors": len(shapes)}
    return topology, shapes, result


def measure(args: argparse.Namespace, *, topology, shapes, result: dict):
    """Fill the result's plan, measured and overlap sections; return the fusion plan."""
    # One phase at a time, each freeing its models before the next (4 ranks share the RAM).
    cases, syncs = comm_cases(args, shapes, topology)
    plan = syncs["fused"][0].plan
    result["plan"] = plan.describe()
    result["measured"] = interleaved(cases, repeats=args.repeats)
    for sync, _ in syncs.values():
        sync.close()
    del cases, syncs
    overlap = interleaved(overlap_cases(args, shapes, topology), repeats=args.repeats)
    result["overlap"] = overlap
    for name in ("ddp", "fused", "hierarchical"):
        key = "ddp_ms" if name == "ddp" else f"{name}_overlap_ms"
        result["measured"][key] = overlap[f"{name}_backward_ms"] - overlap["backward_alone_ms"]
    if not args.no_step:
        result["measured"].update(interleaved(step_cases(args, topology), repeats=args.repeats))
    return plan


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return
    result = launch(args, argv)
    print(json.dumps({"measured": result["measured"], "predicted": result["predicted"],
                      "ratios": result["ratios"], "topology": result["topology"],
                      "plan": result["plan"]}, indent=2))
    if args.json:
        write_json(args.json, result)
        print(args.json)


if __name__ == "__main__":
    main()
