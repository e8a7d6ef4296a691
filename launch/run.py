"""Train: `python launch/run.py [hydra overrides]`.

Validates the config before Ray starts, trains on an embedded local cluster (or
`ray.address`), prints a line per epoch and a final summary, writes summary.json in the
run's output directory and prints its path as the last line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from job.cli import run_command
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


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_command(cfg, validate=validate, work=train)


if __name__ == "__main__":
    main()
