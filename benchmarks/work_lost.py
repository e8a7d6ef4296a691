"""Work lost per restart: epoch checkpoints against step checkpoints.

The default job (`launch/run.py`, 2 workers, digits, 22 steps per epoch), with rank 0
killed (SIGKILL, `debug.kill_at_step`) once mid-epoch and one restart allowed; each kill
point is run with checkpoints at epoch ends only and with `trainer.checkpoint_every_steps`.
From each run's summary: the steps and samples trained again (`resumes[0].lost_steps`,
`lost_samples`), where it resumed, and the wall time (interleaved, so drift hits both).

    python benchmarks/work_lost.py --kill-steps 18 40 61 --every 5 --out benchmarks/results
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


def run_once(out: Path, *, kill_step: int, every: int | None, epochs: int) -> dict:
    command = [sys.executable, str(REPO / "launch/run.py"), f"run.output_dir={out}",
               f"trainer.epochs={epochs}", "trainer.max_failures=1",
               f"debug.kill_at_step={kill_step}"]
    if every:
        command.append(f"trainer.checkpoint_every_steps={every}")
    started = time.time()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    resume = summary["resumes"][0]
    return {"kill_step": kill_step, "every": every, "wall_seconds": time.time() - started,
            "resume_step": resume["global_step"], "lost_steps": resume["lost_steps"],
            "lost_samples": resume["lost_samples"], "global_steps": summary["global_steps"],
            "val_top1": summary["val_top1"]}


def report_lines(rows: list[dict], args) -> list[str]:
    lines = [f"work lost per restart: default job, {args.epochs} epochs, rank 0 killed once "
             "(debug.kill_at_step), one restart", "",
             "| checkpoints | killed before step | resumed at step | steps lost | samples lost "
             "| wall (s) |", "|---|---|---|---|---|---|"]
    for row in rows:
        what = f"every {row['every']} steps" if row["every"] else "epoch ends"
        lines.append(f"| {what} | {row['kill_step']} | {row['resume_step']} | "
                     f"{row['lost_steps']} | {row['lost_samples']} | {row['wall_seconds']:.1f} |")
    lines.append("")
    for every in (None, args.every):
        mine = [r for r in rows if r["every"] == every]
        what = f"every {every} steps" if every else "epoch ends"
        lines.append(f"{what}: mean steps lost {statistics.mean(r['lost_steps'] for r in mine):.1f}, "
                     f"median wall {statistics.median(r['wall_seconds'] for r in mine):.1f} s")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-steps", type=int, nargs="+", default=[18, 40, 61])
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kill_step in args.kill_steps:
            for every in (None, args.every):  # interleaved
                out = Path(tmp) / f"k{kill_step}-e{every or 0}"
                what = f"every {every} steps" if every else "at epoch ends"
                print(f"[work lost] kill before step {kill_step}, checkpoints {what}", flush=True)
                rows.append(run_once(out, kill_step=kill_step, every=every, epochs=args.epochs))
    data = {"args": vars(args), "runs": rows}
    write_report(Path(args.out), name="work_lost", lines=report_lines(rows, args), data=data)
    return data


if __name__ == "__main__":
    main()
