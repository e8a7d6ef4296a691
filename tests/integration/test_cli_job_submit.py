"""The README's cluster path, as written there: a token-authenticated head started with
`ray start --head`, a job submitted with `ray job submit` running `launch/run.py
ray.address=auto`, and the run's summary.json read back. The head gets its own temp dir,
token and free ports on 127.0.0.1, and is stopped (only it) at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
              "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


@pytest.fixture
def token_head():
    """(dashboard URL, environment with the token) of a fresh token-authenticated head."""
    # Short: Ray's socket paths under the temp dir must stay within 107 characters.
    scratch = Path(tempfile.mkdtemp(prefix="rl-head-", dir="/tmp"))
    token_path = scratch / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    # What the README tells a user to export before `ray start` and `ray job submit`.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    command = [_ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--num-cpus=3", f"--temp-dir={scratch / 'ray'}",
               "--include-dashboard=true", *(f"{flag}={port}" for flag, port in ports.items())]
    head = subprocess.Popen(command, env=env, stdout=(scratch / "head.out").open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        _wait_for_dashboard(url, env=env, head=head, log=scratch / "head.out")
        yield url, env
    finally:
        # SIGTERM to `ray start --block` stops the processes of this head, and only those.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_for_dashboard(url: str, *, env: dict, head: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert head.poll() is None, f"ray start ended ({head.returncode}):\n{log.read_text()}"
        listed = subprocess.run([_ray_cli(), "job", "list", "--address", url], env=env,
                                capture_output=True, text=True, timeout=120)
        if listed.returncode == 0:
            return
        assert time.monotonic() < deadline, f"no dashboard at {url}:\n{listed.stderr}"
        time.sleep(2)


def test_job_submit_to_token_head(token_head, tmp_path):
    url, env = token_head
    out = tmp_path / "job"
    submit = [_ray_cli(), "job", "submit", "--address", url, "--working-dir", ".", "--",
              "python", "launch/run.py", "ray.address=auto", "trainer.epochs=2",
              "trainer.max_steps_per_epoch=3", "optim.warmup_epochs=0", f"run.output_dir={out}"]
    done = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout, done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["global_steps"] == 6
    assert summary["config"]["ray"]["address"] == "auto"
    # Without the token the same head refuses the client.
    no_token = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}
    no_token["RAY_AUTH_MODE"] = "disabled"
    refused = subprocess.run([_ray_cli(), "job", "list", "--address", url], env=no_token,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "authentication" in (refused.stdout + refused.stderr).lower()
