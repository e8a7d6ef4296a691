"""Sweep: `python launch/tune.py [tune=coarse_to_fine|exhaustive] [hydra overrides]`.

Every trial is a distributed training run of the same trainer as `launch/run.py`. Writes
`tune_summary.json` and `tune.png` in the output directory, prints one line per finished
trial, the best configuration as overrides for `launch/run.py`, and the summary's path last.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: put the repository root first, so `import tune` finds the package
# rather than this file.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from launch.config import register_configs, validate  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        config = validate(cfg, for_tune=True)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if config.run.output_dir is None:
        config.run.output_dir = HydraConfig.get().runtime.output_dir

    from launch.job import run_tune_sweep

    summary = run_tune_sweep(config)
    best = summary["best"]
    print(f"[raylars tune] best: lr={best['lr']:.6g} warmup_epochs={best['warmup_epochs']:g} "
          f"val_top1={best['val_top1']:.4f} ({best['stage']}); "
          f"{summary['total_trial_epochs']} trial-epochs")
    print(f"[raylars tune] train it: python launch/run.py {summary['override']}")
    print(summary["summary_path"])


if __name__ == "__main__":
    main()
