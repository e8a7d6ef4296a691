"""Train: `python launch/run.py [hydra overrides]`.

Validates the config before Ray starts, trains on an embedded local cluster (or
`ray.address`), prints a line per epoch and a final summary, writes summary.json in the
run's output directory and prints its path as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from job.cli import check_group_options, rerun_command, run_command
from job.config import Config, register_configs, validate

register_configs()


def print_summary(summary: dict) -> None:
    print("[raylars] summary: " + ", ".join(
        f"{key}={summary[key]:.4g}" if isinstance(summary[key], float) else f"{key}={summary[key]}"
        for key in ("val_top1", "train_loss", "images_per_sec", "epochs_completed",
                    "global_steps", "world_size", "skipped_steps", "wall_seconds")))
    print(f"[raylars] checkpoint: {summary['checkpoint']}")


def train(config: Config) -> None:
    from job.trainer import run_training

    summary = run_training(config)
    print_summary(summary)
    print(summary["summary_path"])


def resume_hint(config: Config) -> str:
    """How to go on from the last checkpoint this run registered."""
    run_dir = Path(config.run.output_dir) / config.run.name
    checkpoints = sorted((path for path in run_dir.glob("checkpoint_*")
                          if (path / "state.pt").is_file()), key=lambda path: path.stat().st_mtime)
    if not checkpoints:
        return "No checkpoint was written yet; rerun the same command to start over."
    command = rerun_command("launch/run.py", drop=("trainer.resume_from", "run.output_dir"),
                            add=[f"trainer.resume_from={checkpoints[-1]}"])
    return f"Resume from its last checkpoint with: {command}"


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_command(cfg, validate=validate, work=train, resume_hint=resume_hint)


if __name__ == "__main__":
    check_group_options(sys.argv[1:])
    main()
