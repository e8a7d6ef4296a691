"""What every entry point does around its work: check group options and validate before
Ray starts, pick Hydra's output directory, and turn what a user can cause (a bad config, a
cluster that cannot run the job, a failed run, Ctrl-C or SIGTERM) into a few lines and an
exit code: 2 config, 1 cluster or training failure, 128 + the signal when stopped."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from common.paths import CONF_DIR
from job.config import Config


def check_group_options(argv: list[str], *, conf_dir: Path = CONF_DIR) -> None:
    """Exit 2 with one `config error:` line naming the known options when a `group=option`
    override names an option that `conf/<group>/` does not have (Hydra's own error is a
    dozen lines of search paths)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or arg.startswith(("-", "~")) or "." in key or "/" in key:
            continue
        group = conf_dir / key
        if not group.is_dir() or value in ("null", "") or value.startswith("["):
            continue
        known = sorted(path.stem for path in group.glob("*.yaml"))
        if value not in known:
            print(f"config error: {key}={value}: unknown option; known: {', '.join(known)}",
                  file=sys.stderr)
            sys.exit(2)


def task_overrides() -> list[str]:
    """The command line's overrides, as Hydra parsed them."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def rerun_command(script: str, *, drop: tuple[str, ...] = (), add: list[str]) -> str:
    """`python <script> <the overrides of this run, less `drop` keys> <add>`, shell-quoted."""
    kept = [o for o in task_overrides() if o.lstrip("+").partition("=")[0] not in drop]
    return " ".join(["python", script, *map(shlex.quote, kept + add)])


def run_command(cfg: DictConfig, *, validate: Callable[[DictConfig], Config],
                work: Callable[[Config], None],
                resume_hint: Callable[[Config], str] | None = None) -> None:
    """validate(cfg) -> config (a ValueError exits 2 with `config error: ...`), then
    work(config): a cluster that cannot run it exits 1 with `cluster error: ...`, a failed
    training run 1 with `training failed: ...`, Ctrl-C or SIGTERM 130 or 143 with
    resume_hint(config)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        config = validate(cfg)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    if config.run.output_dir is None:
        config.run.output_dir = HydraConfig.get().runtime.output_dir

    from ray.train import TrainingFailedError

    from job.session import ClusterError, RunStopped, stop_signal

    try:
        work(config)
    except ClusterError as error:
        print(f"cluster error: {error}", file=sys.stderr)
        sys.exit(1)
    except TrainingFailedError as error:
        if stop_signal() is None:
            print(f"training failed: {error}", file=sys.stderr)
            sys.exit(1)
        _stopped(stop_signal(), config=config, resume_hint=resume_hint)
    except KeyboardInterrupt as error:
        import signal

        # Tune re-raises a stop as a plain KeyboardInterrupt: the handler kept the signal.
        signum = stop_signal() or (error.signum if isinstance(error, RunStopped) else signal.SIGINT)
        _stopped(signum, config=config, resume_hint=resume_hint)


def _stopped(signum: int, *, config: Config,
             resume_hint: Callable[[Config], str] | None) -> None:
    import signal

    hint = resume_hint(config) if resume_hint else ""
    print(f"[raylars] stopped by {signal.Signals(signum).name}; Ray is shut down. {hint}".rstrip(),
          file=sys.stderr, flush=True)
    sys.exit(128 + signum)
