"""Start or join Ray for a run, and shut down what we started.

What the session owns besides `ray.init`:
- loopback: the embedded cluster (and a driver joining a loopback address) keeps every
  address and listening socket on 127.0.0.1;
- quiet: our lines, warnings a user must act on and errors reach the terminal; Ray's own
  records stay in its log directory (`<temp dir>/session_latest/logs`);
- fail fast: an address that does not answer, or a cluster that cannot hold the run's
  workers, ends in seconds with an error saying what is missing and what to do;
- lean: the embedded cluster skips the background work a private cluster has no use
  for (`_EMBEDDED_RAY_ENV`), which would take CPU from training on a small machine;
- stopping: Ctrl-C and SIGTERM become `RunStopped`, so `ray_session` shuts Ray down and
  the entry point can say how to resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from job.config import Config

RAY_DATA_LOGGING = Path(__file__).resolve().parent / "ray_data_logging.yaml"

# Ray rewrites a 127.0.0.1 node address to the machine's outward IP unless this switch
# (named for macOS/Windows) is off; with it off, Ray binds its GCS, raylet, agents and
# workers to the node address, 127.0.0.1. Ray reads it at import, and its children at theirs.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Lines other processes send to the driver that are Ray's internal records, not ours: its
# C++ core's info and warning lines, the known-harmless errors, and the raylet's worker
# count notice (a sweep starts many workers on purpose). They stay in Ray's log files.
_RAY_NOISE = (
    re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [IW] \d+ \d+\] \S+\.(cc|h):\d+:"),
    re.compile(r"core_worker\.cc:\d+: Actor with class name: '\w+' and ID: '\w+' has "
               r"constructor arguments in the object store and max_restarts > 0"),
    re.compile(r"worker processes have been started on node"),
    # Abseil's mutex tracing of a process torn down mid-call (Tune stopping a trial).
    re.compile(r"^\[mutex\.cc : \d+\] RAW: "),
    # Train's cleaner doing its job after Tune stopped a trial (ASHA).
    re.compile(r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up"),
    # A timed-out request to Train's autoscaling coordinator on a loaded machine ("safe to
    # ignore", it says, with a traceback).
    re.compile(r"^Failed to send resource request for train-\w+\."),
    # Ray Data saying the progress bars are off (start_ray turns them off on purpose).
    re.compile(r"^Progress bars disabled\. To enable, set"),
)
# The lines of a traceback that follows a dropped line.
_TRACEBACK = re.compile(r"^(Traceback \(most recent call last\):|\s|[\w.]+(Error|Exception)\b)")
# Lines of ours, printed by the workers: shown without Ray's "(RayTrainWorker pid=...)".
_OUR_PREFIX = "[raylars"

# The CPUs the embedded cluster this process started really has (its logical CPUs add
# slots for Ray Data beyond them); None when we joined a cluster or started none.
_embedded_cpus: float | None = None
# The signal that stopped the run (SIGINT or SIGTERM), once one came.
_stop_signal: int | None = None


class ClusterError(RuntimeError):
    """The cluster cannot run this job: not reachable, or too small. The message says
    what is missing and what to do."""


class RunStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the run stops; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def cluster_cpus() -> float:
    """CPUs of the cluster Ray is connected to, as hardware: for our embedded cluster the
    machine's (or cluster.num_cpus), else what the cluster's nodes declare."""
    import ray

    return _embedded_cpus or ray.cluster_resources().get("CPU", 0.0)


def embedded_cpus(config: Config) -> int:
    """Logical CPUs of the embedded cluster: cluster.num_cpus, or the cores + 2 (slots for
    Ray Data's tasks beside the workers)."""
    return config.cluster.num_cpus or (os.cpu_count() or 1) + 2


def use_loopback() -> None:
    """Keep Ray on loopback in this process and the processes it starts."""
    os.environ[LOOPBACK_SWITCH] = "0"
    if "ray" in sys.modules:  # imported already: Ray's node-address lookup reads this
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


_EMBEDDED_RAY_ENV = {"RAY_enable_metrics_collection": "0", "RAY_event_stats": "0",
                     "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0",
                     "LOG_NAME_UPDATE_INTERVAL_S": "2", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}


def init_local_ray(*, runtime_env: dict | None = None, **kwargs) -> None:
    """`ray.init` of a new private cluster on this machine, bound to 127.0.0.1, quiet, and
    token-authenticated with a token of its own (for benchmarks and `start_ray`)."""
    import ray

    use_loopback()
    _quiet_driver()
    if "RAY_AUTH_MODE" not in os.environ:
        # Ray turns token auth on for a new cluster by itself, saying so and writing
        # ~/.ray/auth_token; a fresh token in the environment (which the cluster's
        # processes inherit) keeps the cluster private to this run, silently.
        from ray._raylet import AuthenticationTokenLoader
        from ray._raylet import Config as RayConfig

        os.environ["RAY_AUTH_MODE"] = "token"
        if not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        # Ray caches both when imported; this is how its own auto-enable refreshes them.
        RayConfig.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    # Background work a private cluster has no use for, which on a small machine takes
    # CPU from the training processes: metrics export and event-loop statistics in every
    # Ray process (nothing reads them), idle worker processes started ahead of demand
    # (each costs ~0.7% of a core doing nothing; the job's actors start their own), and
    # the log monitor globbing the log folder every 0.1 s (every 2 s now: a new process's
    # first lines wait up to that long). Measured on 2 cores: Ray's processes other than
    # the training workers from 17.3% to 13.7% of a core (BENCHMARKS.md, Framework tax).
    for name, value in _EMBEDDED_RAY_ENV.items():
        os.environ.setdefault(name, value)
    # Our GCS port, so the job's processes can be told which cluster is theirs (below).
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                 runtime_env=_with_address(runtime_env, f"127.0.0.1:{port}"), **kwargs)
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def _with_address(runtime_env: dict | None, address: str) -> dict:
    """`runtime_env` plus RAY_ADDRESS for the job's workers: Train's placement-group cleaner
    finds its cluster through the state API, which, with no address, looks for running
    clusters and fails when this machine has several (other runs, tests)."""
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "RAY_ADDRESS": address}
    return runtime_env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ray(config: Config) -> bool:
    """Join `ray.address` or start a local cluster bound to loopback. True if we started it.
    Raises ClusterError when the address does not answer."""
    import ray

    if ray.is_initialized():
        return False
    # Ray Data's console logs at WARNING; Train's print patch off, since it echoes each
    # print twice once stdout is wrapped, and our progress lines are plain prints.
    quiet = {"RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING), "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    os.environ.update(quiet)  # the driver's own Ray Data logger reads these too
    runtime_env = {"env_vars": quiet}
    if config.ray.address is not None:
        gcs = _check_reachable(config.ray.address)
        if gcs and _is_loopback(gcs[0]):
            use_loopback()
        _quiet_driver()
        if gcs:
            runtime_env = _with_address(runtime_env, f"{gcs[0]}:{gcs[1]}")
        ray.init(address=config.ray.address, runtime_env=runtime_env,
                 logging_level=logging.WARNING)
        return True
    # CPUs and custom resources are known before the cluster starts (GPUs: after).
    need = {name: amount for name, amount in run_needs(config).items() if name != "GPU"}
    have = {"CPU": float(embedded_cpus(config))}
    if any(have.get(name, 0.0) + 1e-9 < amount for name, amount in need.items()):
        raise ClusterError(_capacity_message(config, need=need, have=have, embedded=True,
                                             waited_s=0.0))
    memory = config.cluster.object_store_memory_mb
    global _embedded_cpus
    _embedded_cpus = config.cluster.num_cpus or os.cpu_count() or 1
    init_local_ray(
        num_cpus=embedded_cpus(config),
        # Keep the dashboard (null): Train V2's placement-group cleaner polls its state
        # API, and without it prints a warning every second (measured: ~1 s of start-up).
        include_dashboard=config.cluster.include_dashboard,
        object_store_memory=memory * 1024 * 1024 if memory else None,
        runtime_env=runtime_env,
    )
    return True


def _quiet_driver() -> None:
    """Route the lines other processes send to this driver through a filter (`_RAY_NOISE`),
    and let our stop handler, not Tune's, see Ctrl-C."""
    from ray._private import worker as ray_worker

    # Tune's own SIGINT handler would end the sweep's stage quietly and let the next begin.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's newer console output prints its tables whatever RunConfig's verbose says;
    # the classic reporter honours verbose=0 (tune/runner.py prints a line per trial).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Remote progress bars (Ray Data's, with progress bars off) only say tqdm is missing.
    logging.getLogger("ray.experimental.tqdm_ray").setLevel(logging.ERROR)
    # Tune's TensorBoard logger skips the non-scalar metrics (the history), saying so each
    # time; a run's own TensorBoard files hold the scalars.
    logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.ERROR)
    # Tune's "operation took 0.6 s, which may be a performance bottleneck" on a busy machine.
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    # Ray offers no filter for what it forwards; every forwarded line (workers' output and
    # the raylet's notices) goes through this one function, looked up at call time.
    original = getattr(ray_worker.print_to_stdstream, "__wrapped__", ray_worker.print_to_stdstream)

    def print_to_stdstream(data, ignore_prefix: bool):
        lines = _drop_noise(data.get("lines", []))
        ours = [line for line in lines if line.startswith(_OUR_PREFIX)]
        if ours:
            original({**data, "lines": ours}, ignore_prefix=True)
        others = [line for line in lines if not line.startswith(_OUR_PREFIX)]
        if others:
            original({**data, "lines": others}, ignore_prefix=ignore_prefix)

    print_to_stdstream.__wrapped__ = original
    ray_worker.print_to_stdstream = print_to_stdstream
    # Ray folds lines that differ only in numbers, from different processes within 5 s,
    # into "[repeated Nx across cluster]": after a restart the new rank 0's step and
    # epoch lines would vanish. Ours are never folded.
    from ray._private import ray_logging

    for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        deduplicator.allow_re = re.compile(re.escape(_OUR_PREFIX))


def _drop_noise(lines: list[str]) -> list[str]:
    """`lines` less Ray's records (`_RAY_NOISE`) and the tracebacks that follow them."""
    kept, dropping = [], False
    for line in lines:
        if any(noise.search(line) for noise in _RAY_NOISE):
            dropping = True
        elif not (dropping and _TRACEBACK.match(line)):
            dropping = False
            kept.append(line)
    return kept


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_reachable(address: str, *, timeout_s: float = 5.0) -> tuple[str, int] | None:
    """The GCS (host, port) behind `address` (`auto`: the cluster this machine last
    started), after checking that it accepts a connection; None for Ray Client addresses
    (ray://), which Ray checks itself."""
    if address.startswith("ray://"):
        return None
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            resolved = canonicalize_bootstrap_address(address)
        except ConnectionError:
            resolved = None
        if resolved is None:
            raise ClusterError(
                "ray.address=auto: no running Ray cluster found on this machine. Start one "
                "with `ray start --head`, give its address (ray.address=HOST:PORT), or "
                "leave ray.address unset for an embedded cluster")
        address = resolved
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ClusterError(f"ray.address={address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ClusterError(
            f"ray.address={address}: nothing answered at {host}:{port} within {timeout_s:g} s "
            f"({error.strerror or error}). Start the cluster there (`ray start --head "
            f"--port {port}`), fix the address, or leave ray.address unset for an embedded "
            "cluster") from None
    return host, int(port)


def run_needs(config: Config) -> dict[str, float]:
    """Ray resources the run's smallest worker group holds: workers x cpus_per_worker
    CPUs, a GPU per worker with use_gpu, and the workers' extra resources."""
    trainer = config.trainer
    workers = trainer.min_world_size
    need = {"CPU": workers * trainer.cpus_per_worker}
    if trainer.use_gpu:
        need["GPU"] = float(workers)
    for name, amount in trainer.worker_resources.items():
        need[name] = workers * amount
    return need


def check_capacity(config: Config, *, embedded: bool) -> None:
    """Fail (ClusterError) when the cluster cannot hold the run's smallest worker group.
    A joined cluster may grow (an autoscaler, nodes joining): it gets
    `trainer.start_timeout_s`, with the need announced to the autoscaler; the embedded
    cluster this process started never grows, so it fails at once."""
    import ray
    from ray.autoscaler.sdk import request_resources

    need = run_needs(config)
    timeout_s = 0.0 if embedded else config.trainer.start_timeout_s
    deadline = time.monotonic() + timeout_s
    requested = False
    try:
        while True:
            have = ray.cluster_resources()
            short = {name: amount for name, amount in need.items()
                     if have.get(name, 0.0) + 1e-9 < amount}
            if not short:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(_capacity_message(config, need=need, have=have,
                                                     embedded=embedded, waited_s=timeout_s))
            if not requested:
                per_worker = {name: amount / config.trainer.min_world_size
                              for name, amount in need.items()}
                request_resources(bundles=[per_worker] * config.trainer.min_world_size)
                requested = True
            time.sleep(1.0)
    finally:
        if requested:
            request_resources(bundles=[])


def _capacity_message(config: Config, *, need: dict, have: dict, embedded: bool,
                      waited_s: float) -> str:
    trainer = config.trainer
    workers = (f"{trainer.min_world_size} workers (trainer.min_workers)" if trainer.elastic
               else f"{trainer.num_workers} workers (trainer.num_workers)")
    asks = [f"{need['CPU']:g} CPUs ({workers} x trainer.cpus_per_worker={trainer.cpus_per_worker:g})"]
    if "GPU" in need:
        asks.append(f"{need['GPU']:g} GPUs (trainer.use_gpu: one per worker)")
    asks += [f"{amount:g} {name} (trainer.worker_resources.{name})"
             for name, amount in need.items() if name not in ("CPU", "GPU")]
    holds = ", ".join(f"{have.get(name, 0.0):g} {name}{'s' if name in ('CPU', 'GPU') else ''}"
                      for name in need)
    where = ("the embedded cluster" if embedded
             else f"the cluster at ray.address={config.ray.address}")
    fix = ("lower trainer.num_workers or trainer.cpus_per_worker, raise cluster.num_cpus to "
           "oversubscribe this machine's cores, or join a larger cluster with ray.address"
           if embedded else
           f"add nodes, lower the run's request, or raise trainer.start_timeout_s (waited "
           f"{waited_s:g} s) if nodes are on their way")
    return f"the run needs {', '.join(asks)}; {where} has {holds}. To fix: {fix}"


def _on_stop_signal(signum: int, frame) -> None:
    global _stop_signal
    if _stop_signal is not None:  # a second signal: stop at once
        os._exit(128 + signum)
    _stop_signal = signum
    raise RunStopped(signum)


def stop_signal() -> int | None:
    """SIGINT or SIGTERM when one stopped the run, else None."""
    return _stop_signal


@contextlib.contextmanager
def ray_session(config: Config):
    """Create the output directory (made absolute in the config), start or join Ray, check
    that the cluster can hold the run, and shut down on exit what we started, Ctrl-C or
    SIGTERM included (raised as RunStopped). Yields the output directory."""
    import ray

    output_dir = Path(config.run.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config.run.output_dir = str(output_dir)
    started = start_ray(config)
    # Set after ray.init, whose own SIGTERM handler exits mid-call and aborts Ray's threads.
    previous = ({sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        check_capacity(config, embedded=started and config.ray.address is None)
        yield output_dir
    finally:
        if started:
            global _embedded_cpus
            _embedded_cpus = None
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
