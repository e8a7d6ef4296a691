"""The GPU check: one command that measures, on a machine with one or more CUDA GPUs, what
the CPU-only development machine cannot, and writes it as JSON plus a Markdown table.

    python benchmarks/gpu_check.py [--out outputs/gpu_check] [--budget-s 450]

1. ResNet-50 training throughput on one GPU: the per-rank trainer's real step
   (`trainers.worker.Trainer.step`, LARS, `comms=ddp` at world size 1, channels_last,
   the uint8 -> normalised input of the loop included) on synthetic 224 px images, for
   precision fp32/bf16/fp16 with torch.compile off and on. Warm-up steps (cuDNN autotuning,
   compilation) are left out; the timed steps sit between two `torch.cuda.synchronize()`.
   Also the host syncs per step (torch's sync debug mode, counted on 3 steps), the fp16
   skipped steps and the peak memory.
2. The Ray Data feed rate at 224 px: the project's train pipeline (`ingest.build_datasets`,
   random-resized-crop + flip) read with `iter_batches` on a local Ray instance with all
   the machine's CPUs, over two Parquet JPEG sets: the digits written by
   `ingest.prepare.prepare` (grayscale, smooth: an upper bound) and photo-like RGB
   500x375 JPEGs (ImageNet's typical size, repeated rows of a few hundred encodings).
3. With 2+ GPUs: comms=fused and comms=hierarchical against comms=ddp on NCCL, one process
   per GPU: the loss of 20 steps (strict fp32, deterministic cuDNN, no TF32: relative
   difference to ddp) and the median step time (bf16, CUDA events).

Each stage runs in its own process group with a time limit (a hung compile or collective
is killed, recorded as such, and the next stage runs). Stages run in priority order while
the overall budget (default 450 s: under 8 minutes on one GPU) lasts; a stage that no
longer fits is recorded as skipped. Without a CUDA GPU it says so and exits 0.
Exit status: 0, or 1 when a stage failed or a comms variant's loss left the tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_util import write_report

IMAGE_SIZE = 224
NUM_CLASSES = 1000
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOSS_TOLERANCE = 1e-3  # relative, comms variants vs ddp, strict fp32 over 20 steps


# ---------------------------------------------------------------- the per-rank trainer

def make_trainer(*, precision: str, comms: str, batch: int, steps: int, rank: int,
                 world_size: int, device, ranks_per_node: int | None = None):
    """The trainer launch/run.py runs on each rank, for ResNet-50 on ImageNet-shaped data
    (a `types.SimpleNamespace` tells it what it needs to know of the data)."""
    from types import SimpleNamespace

    from comms.config import DDPConfig, FusedConfig, HierarchicalConfig
    from trainers.config import ModelConfig, TrainerConfig, TrainingConfig
    from trainers.optim import LarsConfig
    from trainers.precision import PRECISIONS
    from trainers.worker import Trainer

    syncs = {"ddp": DDPConfig, "fused": FusedConfig,
             "hierarchical": lambda: HierarchicalConfig(ranks_per_node=ranks_per_node)}
    data = SimpleNamespace(name="gpu_check", num_classes=NUM_CLASSES, in_channels=3,
                           num_train=(steps + 1) * batch * world_size,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD)
    config = TrainingConfig(
        trainer=TrainerConfig(num_workers=world_size, epochs=1, use_gpu=True,
                              global_batch_size=batch * world_size),
        model=ModelConfig(name="resnet50"),
        optim=LarsConfig(lr=2.0, warmup_epochs=0, weight_decay=5e-5),
        precision=PRECISIONS.get(precision).schema(name=precision),
        comms=syncs[comms]())
    return Trainer(config, rank=rank, world_size=world_size, device=device, data=data)


def synthetic_batch(*, batch: int, device, seed: int):
    import torch

    generator = torch.Generator(device).manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                           device=device, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device, generator=generator)
    return images, labels


def host_syncs_per_step(step, *, steps: int = 3) -> float:
    """Synchronising CUDA calls per call of `step`, from torch's sync debug mode."""
    import warnings

    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught) / steps


def stage_throughput(*, precision: str, compile: bool, batch: int, steps: int,
                     warmup: int) -> dict:
    import torch

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    total = warmup + steps + 3
    trainer = make_trainer(precision=precision, comms="ddp", batch=batch, steps=total,
                           rank=0, world_size=1, device=device)
    if compile:
        # Until TrainerConfig has trainer.compile: the same in-place nn.Module.compile
        # that trainers/speed.py does; it applies through any wrapper around the model.
        trainer.model.compile()
    images, labels = synthetic_batch(batch=batch, device=device, seed=0)

    def step():
        return trainer.step(trainer.inputs(images), labels)

    begin = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - begin
    syncs = host_syncs_per_step(step)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    return {"precision": precision, "compile": compile, "batch": batch, "steps": steps,
            "img_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
            "warmup_s": warmup_s, "host_syncs_per_step": syncs, "loss": float(loss),
            "skipped_steps": trainer.precision.skipped_steps,
            "loss_scale": trainer.precision.loss_scale,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "channels_last": trainer.model.conv1.weight.is_contiguous(
                memory_format=torch.channels_last)}


# ---------------------------------------------------------------- the input pipeline

def write_photo_like(root: Path, *, rows: int, distinct: int, seed: int = 0) -> int:
    """train/ and val/ Parquet files of RGB 500x375 JPEGs with photo-like statistics
    (smooth colour fields plus texture; ~ImageNet's decode cost), `distinct` encodings
    repeated to `rows` rows with unique ids (decode work is per row)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(distinct):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.int16)
        texture = rng.normal(0, 18, field.shape)
        pixels = np.clip(field + texture, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for split, count in (("train", rows), ("val", max(64, rows // 50))):
        (root / split).mkdir(parents=True)
        ids = np.arange(count)
        pq.write_table(pa.table({"image": pa.array([encoded[i % distinct] for i in ids],
                                                   pa.binary()),
                                 "label": pa.array(ids % 10, pa.int64()),
                                 "id": pa.array(ids, pa.int64())}),
                       root / split / "part-00000.parquet", row_group_size=64)
    return rows


def feed_rate(root: Path, *, cpus: int, batch: int, epochs: int) -> dict:
    """img/s of the train split of data=parquet at root, per epoch (Ray already up)."""
    from ingest import announce_epoch, build_datasets
    from ingest.config import DataConfig

    # Blocks (= preprocessing tasks) for every CPU twice over, as a real ImageNet run has
    # (1.28M rows / data.rows_per_block 4096 = 313 blocks).
    config = DataConfig(name="parquet", path=str(root), image_size=IMAGE_SIZE,
                        num_classes=None, augment="crop_flip", channels=3,
                        num_blocks=2 * cpus, rows_per_block=1 << 30)
    datasets, info = build_datasets(config, seed=0)
    rates = []
    for epoch in range(epochs):
        announce_epoch(info, epoch=epoch)
        begin, count = time.perf_counter(), 0
        for rows in datasets["train"].iter_batches(batch_size=batch, batch_format="numpy",
                                                   prefetch_batches=4):
            count += len(rows["label"])
        rates.append(count / (time.perf_counter() - begin))
    # Epoch 0 includes the start of Ray Data's workers.
    steady = statistics.median(rates[1:] or rates)
    return {"images": info.num_train, "epoch_img_per_s": rates, "img_per_s": steady,
            "img_per_s_per_cpu": steady / cpus}


def stage_ingest(*, batch: int, epochs: int, photo_rows: int, digit_copies: int) -> dict:
    import ray
    from ray.data import DataContext

    from ingest.prepare import prepare
    from job.session import init_local_ray

    cpus = os.cpu_count() or 1
    results = {"cpus": cpus}
    with tempfile.TemporaryDirectory() as scratch:
        digits, photos = Path(scratch) / "digits", Path(scratch) / "photos"
        prepare(output=str(digits), fmt="parquet", copies=digit_copies,
                image_size=IMAGE_SIZE, encoding="jpeg", rows_per_group=64)
        write_photo_like(photos, rows=photo_rows, distinct=300)
        # A private instance (never one found on the machine), bound to loopback.
        init_local_ray(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            context = DataContext.get_current()
            context.execution_options.preserve_order = True  # as Ray Train reads it
            context.enable_progress_bars = False
            for name, root in (("digits_224_gray", digits), ("photo_500x375_rgb", photos)):
                results[name] = feed_rate(root, cpus=cpus, batch=batch, epochs=epochs)
        finally:
            ray.shutdown()
    return results


# ---------------------------------------------------------------- comms on 2+ GPUs

def comms_rank(rank: int, world_size: int, port: int, params: dict, queue) -> None:
    """One NCCL rank: each comms variant's loss curve (strict fp32) and step time (bf16)."""
    import datetime

    import torch
    import torch.distributed as dist

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, device_id=device,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    for name in ("ddp", "fused", "hierarchical"):
        try:
            results[name] = {"losses": comms_curve(name, rank, world_size, device, params),
                             "step_ms": comms_step_ms(name, rank, world_size, device, params)}
        except Exception as error:  # the same failure on every rank: record, go on
            results[name] = {"error": f"{type(error).__name__}: {error}"[:400]}
    dist.barrier()
    dist.destroy_process_group()
    queue.put((rank, json.dumps(results)))


def comms_curve(name: str, rank: int, world_size: int, device, params: dict) -> list:
    import torch

    from trainers.speed import enable_cuda_fast_paths

    steps, batch = params["curve_steps"], params["curve_batch"]
    trainer = make_trainer(precision="fp32", comms=name, batch=batch, steps=steps, rank=rank,
                           world_size=world_size, device=device,
                           ranks_per_node=params["ranks_per_node"])
    # Strict fp32 and deterministic kernels: only the reduction order differs.
    enable_cuda_fast_paths(tf32=False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    batches = [synthetic_batch(batch=batch, device=device, seed=7 + 100 * rank + i)
               for i in range(2)]
    losses = [trainer.step(trainer.inputs(batches[s % 2][0]), batches[s % 2][1])
              for s in range(steps)]
    trainer.close()
    torch.backends.cudnn.deterministic = False
    return torch.stack(losses).tolist()


def comms_step_ms(name: str, rank: int, world_size: int, device, params: dict) -> float:
    import torch

    steps, batch = params["time_steps"], params["time_batch"]
    trainer = make_trainer(precision="bf16", comms=name, batch=batch, steps=steps, rank=rank,
                           world_size=world_size, device=device,
                           ranks_per_node=params["ranks_per_node"])
    images, labels = synthetic_batch(batch=batch, device=device, seed=rank)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(steps)]
    for start, end in events:
        start.record()
        trainer.step(trainer.inputs(images), labels)
        end.record()
    torch.cuda.synchronize()
    trainer.close()
    times = sorted(start.elapsed_time(end) for start, end in events[steps // 4:])
    return times[len(times) // 2]


def stage_comms(*, world_size: int, **params) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params["ranks_per_node"] = world_size // 2 if world_size >= 4 and world_size % 2 == 0 \
        else world_size  # two emulated nodes where the GPUs split evenly
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    procs = [context.Process(target=comms_rank, args=(rank, world_size, port, params, queue))
             for rank in range(world_size)]
    for proc in procs:
        proc.start()
    per_rank = dict(queue.get() for _ in range(world_size))  # the stage's timeout guards it
    for proc in procs:
        proc.join(timeout=30)
    results = {name: json.loads(per_rank[0])[name] for name in ("ddp", "fused", "hierarchical")}
    ddp = results["ddp"].get("losses")
    for name in ("fused", "hierarchical"):
        ours = results[name].get("losses")
        if ddp and ours:
            results[name]["max_rel_loss_diff"] = max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, ddp, strict=True))
    return {"world_size": world_size, **params, "variants": results}


STAGES = {"throughput": stage_throughput, "ingest": stage_ingest, "comms": stage_comms}


# ---------------------------------------------------------------- stages, budget, report

def plan(args, gpus: int) -> list[tuple[str, str, dict, float]]:
    """(label, stage, keywords, time cap in s) in priority order: what matters most first,
    the compiled runs (minutes of compilation each on a cold cache) last."""
    eager = [(f"step {p}", "throughput", {"precision": p, "compile": False}, 120.0)
             for p in ("fp32", "bf16", "fp16")]
    compiled = [(f"step {p} compiled", "throughput", {"precision": p, "compile": True}, 240.0)
                for p in ("bf16", "fp16", "fp32")]
    for _, _, keywords, _ in eager + compiled:
        keywords.update(batch=args.batch, steps=args.steps, warmup=args.warmup)
    stages = eager + [("input pipeline", "ingest", {"batch": 256, "epochs": 3,
                                                    "photo_rows": 6000, "digit_copies": 3},
                       150.0)]
    if gpus >= 2:
        stages.append(("comms", "comms", {"world_size": min(gpus, 8), "curve_steps": 20,
                                          "curve_batch": 32, "time_steps": 20,
                                          "time_batch": 128}, 180.0))
    return [s for s in stages + compiled if s[1] not in args.skip
            and not (s[2].get("compile") and "compile" in args.skip)]


def run_stage(stage: str, keywords: dict, *, timeout: float) -> dict:
    """The stage in a child process (its own session, so a timeout kills its ranks too)."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--stage", stage, "--keywords",
                   json.dumps(keywords), "--result", str(result)]
        begin = time.perf_counter()
        child = subprocess.Popen(command, start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return {"status": f"timed out after {timeout:.0f} s", "seconds": timeout}
        seconds = time.perf_counter() - begin
        if child.returncode or not result.exists():
            return {"status": f"failed (exit {child.returncode}; see its output above)",
                    "seconds": seconds}
        return {"status": "ok", "seconds": seconds, **json.loads(result.read_text())}


def run_child(stage: str, keywords: str, result: str) -> int:
    Path(result).write_text(json.dumps(STAGES[stage](**json.loads(keywords)), default=str))
    return 0


def environment() -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/gpu_check", help="folder for .json and .md")
    parser.add_argument("--budget-s", type=float, default=450.0, help="all stages together")
    parser.add_argument("--batch", type=int, default=256, help="images per step, one GPU")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--skip", default="", help="comma list of: throughput, ingest, "
                                                   "comms, compile")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--keywords", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return run_child(args.stage, args.keywords, args.result)
    import torch

    if not torch.cuda.is_available():
        print("[gpu_check] no CUDA GPU on this machine: nothing measured. Run it on a GPU "
              "node (see BENCHMARKS.md, GPU check).", flush=True)
        return 0
    args.skip = {name for name in args.skip.split(",") if name}
    report = {"environment": environment(), "budget_s": args.budget_s, "stages": []}
    deadline = time.monotonic() + args.budget_s
    for label, stage, keywords, cap in plan(args, len(report["environment"]["gpus"])):
        left = deadline - time.monotonic()
        if left < min(cap, 60.0):
            outcome = {"status": f"skipped: {left:.0f} s of the budget left"}
        else:
            print(f"[gpu_check] {label} (at most {min(cap, left):.0f} s)", flush=True)
            outcome = run_stage(stage, keywords, timeout=min(cap, left))
        report["stages"].append({"label": label, "stage": stage, **keywords, **outcome})
    write_report(Path(args.out), name="gpu_check", lines=markdown(report), data=report)
    return 1 if any(failed(s) for s in report["stages"]) else 0


def failed(stage: dict) -> bool:
    if stage["status"].startswith(("failed", "timed out")):
        return True
    variants = stage.get("variants", {})
    return any("error" in v or v.get("max_rel_loss_diff", 0) > LOSS_TOLERANCE
               for v in variants.values())


def markdown(report: dict) -> list[str]:
    env = report["environment"]
    lines = [f"GPU check: {len(env['gpus'])} x {env['gpus'][0]}, torch {env['torch']} "
             f"(CUDA {env['cuda']}, cuDNN {env['cudnn']}, NCCL {env['nccl']}), "
             f"{env['cpus']} CPUs", "",
             "| ResNet-50 step, 1 GPU, 224 px, channels_last | img/s | ms/step | host syncs/step "
             "| skipped | peak GiB | warm-up s | status |", "|---|---|---|---|---|---|---|---|"]
    for s in (s for s in report["stages"] if s["stage"] == "throughput"):
        if s["status"] == "ok":
            lines.append(f"| {s['precision']}{', compiled' if s['compile'] else ''}, batch "
                         f"{s['batch']} | {s['img_per_s']:.0f} | {s['step_ms']:.1f} | "
                         f"{s['host_syncs_per_step']:g} | {s['skipped_steps']} | "
                         f"{s['peak_gib']:.1f} | {s['warmup_s']:.0f} | ok |")
        else:
            lines.append(f"| {s['label']} | | | | | | | {s['status']} |")
    return lines + ingest_lines(report) + comms_lines(report)


def ingest_lines(report: dict) -> list[str]:
    lines = ["", "| Ray Data train split, 224 px crop_flip | images | CPUs | img/s | "
                 "img/s per CPU | status |", "|---|---|---|---|---|---|"]
    for s in (s for s in report["stages"] if s["stage"] == "ingest"):
        if s["status"] != "ok":
            lines.append(f"| input pipeline | | | | | {s['status']} |")
            continue
        for name in ("digits_224_gray", "photo_500x375_rgb"):
            r = s[name]
            lines.append(f"| {name} | {r['images']} | {s['cpus']} | {r['img_per_s']:.0f} | "
                         f"{r['img_per_s_per_cpu']:.0f} | ok |")
    return lines


def comms_lines(report: dict) -> list[str]:
    stages = [s for s in report["stages"] if s["stage"] == "comms"]
    if not stages:
        return ["", "comms: needs 2+ GPUs (not run)."]
    s = stages[0]
    if s["status"] != "ok":
        return ["", f"comms: {s['status']}"]
    lines = ["", f"| comms, {s['world_size']} GPUs (hierarchical: {s['ranks_per_node']} per "
                 f"node) | max rel. loss diff vs ddp, {s['curve_steps']} steps fp32 | "
                 f"bf16 step ms, batch {s['time_batch']} | status |", "|---|---|---|---|"]
    for name, v in s["variants"].items():
        diff = v.get("max_rel_loss_diff")
        status = v.get("error") or ("ok" if diff is None or diff <= LOSS_TOLERANCE
                                    else f"loss differs (> {LOSS_TOLERANCE:g})")
        lines.append(f"| {name} | {'' if diff is None else f'{diff:.2e}'} | "
                     f"{v.get('step_ms', float('nan')):.1f} | {status} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
