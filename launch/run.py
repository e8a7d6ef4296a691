"""Train: `python launch/run.py [hydra overrides]`.

Validates the config before Ray starts, trains on an embedded local cluster (or
`ray.address`), prints a line per epoch and a final summary, writes summary.json in the
run's output directory and prints its path as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: make the repository root importable even without `pip install -e .`.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from launch.config import register_configs, validate  # noqa: E402

register_configs()


def print_summary(summary: dict) -> None:
    print("[raylars] summary: " + ", ".join(
        f"{key}={summary[key]:.4g}" if isinstance(summary[key], float) else f"{key}={summary[key]}"
        for key in ("val_top1", "train_loss", "images_per_sec", "epochs_completed",
                    "global_steps", "world_size", "skipped_steps", "wall_seconds")))
    print(f"[raylars] checkpoint: {summary['checkpoint']}")


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        config = validate(cfg)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if config.run.output_dir is None:
        config.run.output_dir = HydraConfig.get().runtime.output_dir

    from ray.train import TrainingFailedError

    from launch.job import run_training

    try:
        summary = run_training(config)
    except TrainingFailedError as error:
        print(f"training failed: {error}", file=sys.stderr)
        sys.exit(1)
    print_summary(summary)
    print(summary["summary_path"])


if __name__ == "__main__":
    main()
