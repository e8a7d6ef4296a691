"""What every entry point does around its work: validate before Ray starts, pick Hydra's
output directory, and turn the errors a user can cause into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import DictConfig

from job.config import Config


def run_command(cfg: DictConfig, *, validate: Callable[[DictConfig], Config],
                work: Callable[[Config], None]) -> None:
    """validate(cfg) -> config (a ValueError exits 2 with `config error: ...`), then
    work(config) (a failed training run exits 1 with `training failed: ...`)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        config = validate(cfg)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if config.run.output_dir is None:
        config.run.output_dir = HydraConfig.get().runtime.output_dir

    from ray.train import TrainingFailedError

    try:
        work(config)
    except TrainingFailedError as error:
        print(f"training failed: {error}", file=sys.stderr)
        sys.exit(1)
