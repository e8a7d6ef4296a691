"""Plot benchmarks/comms_bench.py results against the emulated link latency.

Usage:
    python benchmarks/plot_comms_delay.py --out benchmarks/figures/comms_delay.png RUN.json ...

Each RUN.json is a `benchmarks/comms_bench.py --emulate-hosts H --delay-ms D --json` result. The
figure has two panels: the measured sync times (per-tensor, fused, hierarchical, flat
floor) against the one-way delay, and per-tensor / fused and hierarchical / fused against
the same axis, with the cost model's predictions dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_util import pyplot, save_figure

CASES = ("per_tensor_ms", "fused_ms", "hierarchical_ms", "flat_floor_ms")


def load(paths: list[Path]) -> list[dict]:
    runs = [json.loads(path.read_text()) for path in paths]
    for path, run in zip(paths, runs, strict=True):
        if not run.get("emulate_hosts"):
            raise ValueError(f"{path}: not an --emulate-hosts run")
    return sorted(runs, key=lambda run: run["delay_ms"])


def plot(runs: list[dict], *, out: Path) -> None:
    delays = [run["delay_ms"] for run in runs]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for case in CASES:
        line, = left.plot(delays, [run["measured"][case] for run in runs], "o-",
                          label=case.removesuffix("_ms"))
        left.plot(delays, [run["predicted"][case] for run in runs], "--",
                  color=line.get_color(), alpha=0.6)
    left.set_yscale("log")
    left.set(xlabel="one-way link delay (ms)", ylabel="ms, log scale (dashed: cost model)",
             title=f"{runs[0]['workers']} ranks on {runs[0]['emulate_hosts']} emulated hosts, "
                   f"{runs[0]['rate_mbit']:g} Mbit/s")
    left.legend()
    for case in ("per_tensor_ms", "hierarchical_ms"):
        right.plot(delays, [run["measured"][case] / run["measured"]["fused_ms"] for run in runs],
                   "o-", label=f"{case.removesuffix('_ms')} / fused")
    right.axhline(5.0, color="grey", ls=":", label="goal: per-tensor ≥ 5x fused")
    right.axhline(0.7, color="grey", ls="-.", label="goal: hierarchical ≤ 0.7x ring")
    right.set(xlabel="one-way link delay (ms)", ylabel="ratio to fused",
              title="measured ratios")
    right.legend()
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    plot(load(args.runs), out=args.out)
    print(args.out)


if __name__ == "__main__":
    main()
