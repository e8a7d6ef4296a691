"""Time gradient synchronisation of a model's real gradient shapes on real gloo ranks.

Usage:
    python benchmarks/comms.py --workers 4 --model resnet50 [--json PATH] [--repeats 5]
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
Cost model: alpha from small and beta from large flat all_reduces (1 KB .. 100 MB) on this
group, then predicted per_tensor/fused/hierarchical/flat_floor next to the measured
figures (per_tensor/fused: launched together, gloo's two threads overlapping their
latencies; hierarchical: its chunks through the stage pipeline).

--emulate-hosts H puts the ranks of each emulated host in its own network namespace; the
namespaces are joined through a private switch namespace by veth pairs whose egress is
shaped by tc (tbf for --rate-mbit). --delay-ms uses tc netem where the kernel has it;
otherwise the switch is benchmarks/delay_relay.py, a user-space switch that holds every
frame D ms (the result's `delay_via` says which). Needs root; it stops with a message
saying what is missing otherwise. Addresses are private 10.213.0.x inside those
namespaces only; nothing is reachable from outside.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # replace the script's folder: Ray ships it to workers

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

SUBNET = "10.213.0"
# ProcessGroupGloo's worker threads (torch's default; every group here uses it): how many
# launched collectives progress at once.
GLOO_THREADS = 2


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


class EmulatedHosts:
    """Network namespaces, one per emulated host, joined in a switch namespace by a bridge,
    or by benchmarks/delay_relay.py when --delay-ms is asked of a kernel without netem."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.tag = args, f"rlc{os.getpid() % 100000}"
        self.delay_via: str | None = None
        self.relay: subprocess.Popen | None = None

    def namespace(self, host: int) -> str:
        return f"{self.tag}h{host}"

    def interface(self, host: int) -> str:
        return f"{self.tag}e{host}"

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def create(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("--emulate-hosts needs root (ip netns, tc)")
        switch = f"{self.tag}sw"
        self._ip("netns", "add", switch)
        self.delay_via = ("netem" if self._kernel_has_netem() else "relay") \
            if self.args.delay_ms else None
        if self.delay_via != "relay":
            self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
            self._ip("-n", switch, "link", "set", "br0", "up")
        for host in range(self.args.emulate_hosts):
            ns, dev, peer = self.namespace(host), self.interface(host), f"{self.tag}p{host}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer,
                     "netns", switch)
            if self.delay_via == "relay":
                self._ip("-n", switch, "link", "set", peer, "up")
            else:
                self._ip("-n", switch, "link", "set", peer, "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._shape(ns, dev)
        if self.delay_via == "relay":
            self._start_relay(switch)

    def _kernel_has_netem(self) -> bool:
        """Try a netem qdisc on a throwaway veth in the switch namespace."""
        switch = f"{self.tag}sw"
        self._ip("-n", switch, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        done = subprocess.run(["ip", "netns", "exec", switch, "tc", "qdisc", "add", "dev",
                               "probe0", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True)
        self._ip("-n", switch, "link", "del", "probe0")
        return done.returncode == 0

    def _start_relay(self, switch: str) -> None:
        """No netem: the switch is benchmarks/delay_relay.py, which holds every frame
        --delay-ms before forwarding it."""
        ports = [f"{self.tag}p{host}" for host in range(self.args.emulate_hosts)]
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", switch, sys.executable, str(REPO / "benchmarks" /
             "delay_relay.py"), "--delay-ms", str(self.args.delay_ms), *ports],
            stdout=subprocess.PIPE, text=True)
        line = self.relay.stdout.readline().strip()
        if line != "ready":
            self.relay.kill()
            raise SystemExit(f"--emulate-hosts: the delay relay did not start ({line!r})")

    def _shape(self, ns: str, dev: str) -> None:
        rate, delay = self.args.rate_mbit, self.args.delay_ms
        if delay and self.delay_via == "netem":
            spec = ["netem", "delay", f"{delay}ms"] + (["rate", f"{rate}mbit"] if rate else [])
        elif rate:
            # tbf: burst must hold at least one timer tick of data at this rate.
            burst = max(32 * 1024, int(rate * 1e6 / 8 / 250))
            spec = ["tbf", "rate", f"{rate}mbit", "burst", str(burst), "latency", "100ms"]
        else:
            return
        done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                               "root", *spec], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--emulate-hosts: the kernel refused tc qdisc {spec[0]}: "
                             f"{done.stderr.strip()}")

    def destroy(self) -> None:
        if self.relay is not None:
            self.relay.terminate()
            self.relay.wait()
        for host in range(self.args.emulate_hosts):
            subprocess.run(["ip", "netns", "del", self.namespace(host)], capture_output=True)
        subprocess.run(["ip", "netns", "del", f"{self.tag}sw"], capture_output=True)

    @staticmethod
    def _ip(*words: str) -> None:
        done = subprocess.run(["ip", *words], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--emulate-hosts: `ip {' '.join(words)}` failed: "
                             f"{done.stderr.strip()}")


# ---- measurement (inside each rank) -------------------------------------------------------
def slowest(seconds: float) -> float:
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def interleaved(cases: dict, *, repeats: int) -> dict:
    """Median ms of each case, cases run in turn within each repeat after one warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(repeats + 1):
        for name, fn in cases.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            elapsed = slowest(time.perf_counter() - start)
            if round_index:
                samples[name].append(elapsed)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


class GradShapes(nn.Module):
    """Parameters with a model's shapes; backward gives each one a filled gradient."""

    def __init__(self, shapes: list[torch.Size]):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w.sum() for w in self.weights) * x


def build_sync(name: str, args, *, topology, params_module: nn.Module):
    from comms.config import CommsConfig
    from comms.sync import FusedSync

    config = CommsConfig(name=name, fusion_threshold_mb=args.threshold_mb,
                         segments=args.segments, variant=args.variant,
                         pipeline_chunk_mb=args.chunk_mb)
    sync = FusedSync(config, world_size=dist.get_world_size(), device=torch.device("cpu"),
                     topology=topology)
    return sync, sync.wrap(params_module)


def comm_cases(args, shapes, topology) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(dist.get_rank())
    grads = [torch.randn(s, generator=generator) for s in shapes]
    floor = torch.randn(sum(g.numel() for g in grads), generator=generator)
    syncs = {}
    for name in ("fused", "hierarchical"):
        module = GradShapes(shapes)
        syncs[name] = build_sync(name, args, topology=topology, params_module=module)
        for p, g in zip(module.parameters(), grads, strict=True):
            p.grad.copy_(g)

    def per_tensor():
        for work in [dist.all_reduce(g, async_op=True) for g in grads]:
            work.wait()

    cases = {"per_tensor_ms": per_tensor,
             "fused_ms": syncs["fused"][0].finish,
             "hierarchical_ms": syncs["hierarchical"][0].finish,
             "flat_floor_ms": lambda: dist.all_reduce(floor)}
    return cases, syncs


def overlap_cases(args, shapes, topology) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    x = torch.ones(())
    plain = GradShapes(shapes)
    ddp = DistributedDataParallel(GradShapes(shapes), bucket_cap_mb=args.threshold_mb,
                                  gradient_as_bucket_view=True)
    ours = {name: build_sync(name, args, topology=topology, params_module=GradShapes(shapes))
            for name in ("fused", "hierarchical")}

    def run(module, sync=None):
        def step():
            module(x).backward()
            if sync is not None:
                sync.finish()
        return step

    return {"backward_alone_ms": run(plain), "ddp_backward_ms": run(ddp),
            "fused_backward_ms": run(ours["fused"][1], ours["fused"][0]),
            "hierarchical_backward_ms": run(ours["hierarchical"][1], ours["hierarchical"][0])}


def step_cases(args, topology) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from trainers.config import OptimConfig
    from trainers.models import build_model
    from trainers.optim import build_optimizer

    generator = torch.Generator().manual_seed(dist.get_rank())
    images = torch.randn(args.step_batch, 3, args.step_image_size, args.step_image_size,
                         generator=generator)
    labels = torch.randint(0, 1000, (args.step_batch,), generator=generator)

    def make(kind):
        torch.manual_seed(0)
        model = build_model(name=args.model, num_classes=1000)
        optimizer = build_optimizer(OptimConfig(), model=model)
        sync = None
        if kind == "ddp":
            train = DistributedDataParallel(model, bucket_cap_mb=args.threshold_mb,
                                            gradient_as_bucket_view=True)
        else:
            sync, train = build_sync(kind, args, topology=topology, params_module=model)

        def step():
            optimizer.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(train(images), labels).backward()
            if sync is not None:
                sync.finish()
            optimizer.step()
        return step

    return {"step_ddp_ms": make("ddp"), "step_ours_ms": make("fused"),
            "step_hierarchical_ms": make("hierarchical")}


def calibrate(args, *, group_name: str, groups) -> dict:
    """Fit the ring formula to flat all_reduce times on the world, intra or leader group."""
    from comms.allreduce import FlatAllreduce, time_allreduce
    from comms.cost_model import calibrate_ring

    # 1 KB .. 64 MB of fp32, and 100 MB: the fused figures move a whole ResNet-50
    # gradient (97.5 MB), so the bandwidth fit must reach that size.
    numels = [256 * 4**k for k in range(9)] + [25 * 2**20]
    group = {"world": None, "intra": groups.intra if groups else None,
             "leaders": groups.leaders if groups else None}[group_name]
    size = dist.get_world_size(group) if group is not None else dist.get_world_size()
    member = group_name == "world" or group is not None
    # Everyone takes part in the barriers; only members time the group's all_reduce.
    times = time_allreduce(FlatAllreduce(group=group) if member else _Idle(), numels=numels,
                           repeats=3)
    link = calibrate_ring(sizes_bytes=[4 * n for n in numels], times_s=times,
                          num_ranks=size) if member and size > 1 else None
    return {"sizes_bytes": [4 * n for n in numels], "times_ms": [t * 1e3 for t in times],
            "num_ranks": size, "alpha_us": link.alpha_s * 1e6 if link else None,
            "beta_gbit_per_s": 8e-9 / link.beta_s_per_byte if link and link.beta_s_per_byte
            else None, "link": link}


class _Idle:
    def launch(self, tensors):
        from comms.allreduce import Handle
        return Handle()


def predictions(*, shapes, plan, topology, variant, world_link, chunk_mb, intra_link=None,
                inter_link=None) -> dict:
    from comms.cost_model import ClusterShape, launched_together_s, pipeline_s, ring_s
    world = topology.world_size
    tensor_bytes = [4 * torch.Size(s).numel() for s in shapes]
    intra, inter = intra_link or world_link, inter_link or world_link
    cluster = ClusterShape(num_nodes=topology.num_nodes,
                           ranks_per_node=len(topology.nodes[0]), intra=intra, inter=inter)
    algorithm = "hierarchical_2d" if variant == "2d" else "hierarchical"
    flat_link = inter if topology.num_nodes > 1 else intra
    bucket_bytes = [b.nbytes for b in plan.buckets]
    # The hierarchical sync streams every bucket's chunks through one stage pipeline.
    chunk = chunk_mb * 2**20
    chunks = [part for b in bucket_bytes
              for part in [chunk] * int(b // chunk) + ([b % chunk] if b % chunk else [])]
    return {
        # Both cases launch all their all_reduces at once; gloo runs GLOO_THREADS at a time.
        "per_tensor_ms": launched_together_s(sizes_bytes=tensor_bytes, num_ranks=world,
                                             link=flat_link, concurrency=GLOO_THREADS) * 1e3,
        "fused_ms": launched_together_s(sizes_bytes=bucket_bytes, num_ranks=world,
                                        link=flat_link, concurrency=GLOO_THREADS) * 1e3,
        "hierarchical_ms": pipeline_s(algorithm, chunks=chunks, cluster=cluster) * 1e3,
        "flat_floor_ms": ring_s(nbytes=sum(tensor_bytes), num_ranks=world, link=flat_link) * 1e3,
    }


def rank_main(args: argparse.Namespace) -> None:
    from comms.allreduce import build_groups
    from comms.sync import choose_variant, discover_topology
    from trainers.models import build_model

    host, port = args.master.rsplit(":", 1)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=args.rank,
                            world_size=args.workers, timeout=datetime.timedelta(minutes=10))
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
    # One phase at a time, each freeing its models before the next (4 ranks share the RAM).
    cases, syncs = comm_cases(args, shapes, topology)
    plan = syncs["fused"][0].plan
    result["plan"] = plan.describe()
    result["measured"] = interleaved(cases, repeats=args.repeats)
    _close(syncs)
    del cases, syncs
    overlap = interleaved(overlap_cases(args, shapes, topology), repeats=args.repeats)
    result["overlap"] = overlap
    for name in ("ddp", "fused", "hierarchical"):
        key = "ddp_ms" if name == "ddp" else f"{name}_overlap_ms"
        result["measured"][key] = overlap[f"{name}_backward_ms"] - overlap["backward_alone_ms"]
    if not args.no_step:
        result["measured"].update(interleaved(step_cases(args, topology), repeats=args.repeats))
    groups = build_groups(topology) if topology.num_nodes > 1 else None
    world_cal = calibrate(args, group_name="world", groups=groups)
    cal = {"world": world_cal}
    intra_link = inter_link = None
    if args.emulate_hosts and groups is not None:
        cal["intra"] = calibrate(args, group_name="intra", groups=groups)
        cal["leaders"] = calibrate(args, group_name="leaders", groups=groups)
        intra_link, inter_link = _gathered_links(cal)
    result["calibration"] = {k: {kk: vv for kk, vv in v.items() if kk != "link"}
                             for k, v in cal.items()}
    result["predicted"] = predictions(shapes=shapes, plan=plan, variant=result["hierarchical_variant"],
                                      topology=topology, world_link=world_cal["link"],
                                      chunk_mb=args.chunk_mb,
                                      intra_link=intra_link, inter_link=inter_link)
    result["predicted_over_measured"] = {
        k: result["predicted"][k] / result["measured"][k] for k in result["predicted"]}
    _add_ratios(result)
    if args.rank == 0:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    dist.barrier()
    dist.destroy_process_group()


def _close(syncs: dict) -> None:
    for sync, _ in syncs.values():
        sync.close()


def _gathered_links(cal: dict):
    """Every rank needs the intra (node 0's) and inter (leaders') links: rank 0 is in both
    groups, so broadcast its fit."""
    from comms.cost_model import Link

    values = torch.zeros(4, dtype=torch.float64)
    if dist.get_rank() == 0:
        values[:] = torch.tensor([cal["intra"]["link"].alpha_s, cal["intra"]["link"].beta_s_per_byte,
                                  cal["leaders"]["link"].alpha_s,
                                  cal["leaders"]["link"].beta_s_per_byte], dtype=torch.float64)
    dist.broadcast(values, src=0)
    return (Link(alpha_s=values[0].item(), beta_s_per_byte=values[1].item()),
            Link(alpha_s=values[2].item(), beta_s_per_byte=values[3].item()))


def _add_ratios(result: dict) -> None:
    m = result["measured"]
    ratios = {"fused_over_floor": m["fused_ms"] / m["flat_floor_ms"],
              "per_tensor_over_fused": m["per_tensor_ms"] / m["fused_ms"],
              "hierarchical_over_fused": m["hierarchical_ms"] / m["fused_ms"]}
    if "step_ours_ms" in m:
        ratios["step_ours_over_ddp"] = m["step_ours_ms"] / m["step_ddp_ms"]
        ratios["step_hierarchical_over_ddp"] = m["step_hierarchical_ms"] / m["step_ddp_ms"]
    result["ratios"] = ratios


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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(args.json)


if __name__ == "__main__":
    main()
