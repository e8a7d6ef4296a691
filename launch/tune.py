"""Sweep: `python launch/tune.py [tune=coarse_to_fine|exhaustive] [hydra overrides]`.

Every trial is a distributed training run of the same trainer as `launch/run.py`. Writes
`tune_summary.json` and `tune.png` in the output directory, prints one line per finished
trial, the best configuration as overrides for `launch/run.py`, and the summary's path last.
"""

from __future__ import annotations

import sys

# This file is named like the `tune` package, and Python puts its folder first on
# sys.path (Ray ships that entry to the trials too): drop it so `import tune` finds the
# installed package.
sys.path.pop(0)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from job.cli import check_group_options, rerun_command, run_command  # noqa: E402
from job.config import register_configs  # noqa: E402
from tune.config import SweepConfig, validate_sweep  # noqa: E402

register_configs(SweepConfig)


def sweep(config: SweepConfig) -> None:
    from tune.sweep import run_tune_sweep

    summary = run_tune_sweep(config)
    best = summary["best"]
    print(f"[raylars tune] best: lr={best['lr']:.6g} warmup_epochs={best['warmup_epochs']:g} "
          f"val_top1={best['val_top1']:.4f} ({best['stage']}); "
          f"{summary['total_trial_epochs']} trial-epochs")
    print(f"[raylars tune] train it: python launch/run.py {summary['override']}")
    print(summary["summary_path"])


def resume_hint(config: SweepConfig) -> str:
    command = rerun_command("launch/tune.py", drop=("run.output_dir",),
                            add=[f"run.output_dir={config.run.output_dir}"])
    return (f"Rerun with the same run.output_dir to restore the finished and interrupted "
            f"stages: {command}")


@hydra.main(config_path="../conf", config_name="sweep", version_base=None)
def main(cfg: DictConfig) -> None:
    run_command(cfg, validate=validate_sweep, work=sweep, resume_hint=resume_hint)


if __name__ == "__main__":
    check_group_options(sys.argv[1:])
    main()
