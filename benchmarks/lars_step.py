"""Time one LARS optimizer step against torch's foreach momentum SGD.

Usage:
    python benchmarks/lars_step.py [--model resnet50] [--repeats N] [--device cpu|cuda]
                                   [--threads N] [--json PATH]

Both optimizers get the same parameter groups (trainers.lars.lars_param_groups) over
the model's parameters with fixed random gradients. Steps are interleaved
(LARS, SGD, LARS, SGD, ...) after a warmup so drift in machine load hits both alike;
the report is the median milliseconds per step and the LARS/SGD ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from bench_util import write_json

from trainers.lars import LARS, lars_param_groups

WEIGHT_DECAY = 5e-5


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="a torchvision.models builder name")
    ap.add_argument("--repeats", type=int, default=30, help="timed steps per optimizer")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    return ap.parse_args(argv)


def _model_with_grads(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def _timer(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed() -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3

    return timed


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Separate model copies: each optimizer moves its own weights, so neither sees
    # the other's updates (LARS trust ratios depend on the weights).
    lars_model = _model_with_grads(args.model, device)
    sgd_model = _model_with_grads(args.model, device)
    lars = LARS(lars_param_groups(lars_model, weight_decay=WEIGHT_DECAY), lr=0.1,
                momentum=0.9)
    sgd = torch.optim.SGD(lars_param_groups(sgd_model, weight_decay=WEIGHT_DECAY), lr=0.1,
                          momentum=0.9, foreach=True)
    timers = {"lars": _timer(lars.step, device), "sgd": _timer(sgd.step, device)}
    for _ in range(args.warmup):
        for t in timers.values():
            t()
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(args.repeats):
        for k, t in timers.items():
            samples[k].append(t())
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "model": args.model,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "num_params": sum(p.numel() for p in lars_model.parameters()),
        "lars_median_ms": med["lars"],
        "sgd_median_ms": med["sgd"],
        "ratio": med["lars"] / med["sgd"],
        "samples_ms": samples,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    res = run(args)
    print(f"{res['model']} ({res['num_params'] / 1e6:.1f}M params), device={res['device']}, "
          f"threads={res['threads']}, repeats={res['repeats']}")
    print(f"{'optimizer':<24}{'median ms/step':>16}")
    print(f"{'LARS (trainers.lars)':<24}{res['lars_median_ms']:>16.2f}")
    print(f"{'SGD foreach momentum':<24}{res['sgd_median_ms']:>16.2f}")
    print(f"{'ratio LARS/SGD':<24}{res['ratio']:>16.3f}")
    if args.json is not None:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
