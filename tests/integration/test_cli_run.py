"""`launch/run.py` and `launch/tune.py` as a user runs them, in subprocesses: the embedded
cluster listens on loopback only, the output holds our lines and nothing of Ray's, bad
input fails fast with an error that says what to do, and SIGTERM stops cleanly with a
resume hint. The time bounds are generous for a loaded 2-core machine; a hang breaks them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["trainer.max_steps_per_epoch=4", "optim.warmup_epochs=0"]
# Lines a user may see: ours, the summary's path, Python warnings of our config checks.
OURS = ("[raylars", "/")


def _launch(script: str, *overrides: str, out: Path) -> subprocess.Popen:
    """Start a launch script as a user would (no RAY_* switch set by us), output to files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    return subprocess.Popen(
        [sys.executable, f"launch/{script}", *overrides], cwd=REPO, env=env,
        stdout=(out / "stdout").open("w"), stderr=(out / "stderr").open("w"),
        start_new_session=True)


def _run(script: str, *overrides: str, out: Path, timeout_s: float) -> tuple[int, str, float]:
    """Run to the end; (exit code, stdout + stderr, seconds)."""
    began = time.monotonic()
    process = _launch(script, *overrides, out=out)
    try:
        code = process.wait(timeout=timeout_s)
    finally:
        _kill_tree(process)
    return code, _output(out), time.monotonic() - began


def _output(out: Path) -> str:
    return (out / "stdout").read_text() + (out / "stderr").read_text()


def _kill_tree(process: subprocess.Popen) -> None:
    with_session = os.getpgid(process.pid) if process.poll() is None else None
    if with_session is not None:
        os.killpg(with_session, signal.SIGKILL)
        process.wait()


def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _address(hex_address: str) -> tuple[str, int]:
    ip, port = hex_address.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 16:  # /proc/net/tcp6: four little-endian 32-bit words
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def listening_sockets(root: int) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state held by `root`'s process tree."""
    found = set()
    for pid in _tree_pids(root):
        try:
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
            for table in ("tcp", "tcp6"):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        found.add((pid, *_address(fields[1])))
        except OSError:  # the process ended meanwhile
            continue
    return found


def is_loopback(ip: str) -> bool:
    ip = ip.removeprefix("::ffff:")  # an IPv4 address on an IPv6 socket
    return ip.startswith("127.") or ip == "::1"


def _wait_for(out: Path, text: str, *, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in _output(out):
        assert process.poll() is None, f"ended ({process.returncode}) before {text!r}:\n{_output(out)}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{_output(out)}"
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_default_run_is_quiet_and_listens_on_loopback_only(tmp_path):
    process = _launch("run.py", "trainer.epochs=4", *SMALL, f"run.output_dir={tmp_path / 'run'}",
                      out=tmp_path)
    seen: set[tuple[int, str, int]] = set()
    try:
        _wait_for(tmp_path, "[raylars] epoch 1/4", process=process, timeout_s=240)
        # While it trains: the driver, GCS, raylet, agents, dashboard, workers.
        while process.poll() is None:
            seen |= listening_sockets(process.pid)
            time.sleep(0.5)
        assert process.wait(timeout=240) == 0, _output(tmp_path)
    finally:
        _kill_tree(process)
    assert len({pid for pid, _, _ in seen}) >= 4, seen
    outside = sorted((pid, ip, port) for pid, ip, port in seen if not is_loopback(ip))
    assert not outside, f"listening beyond loopback: {outside}"
    lines = [line for line in _output(tmp_path).splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith(OURS)] == []
    assert sum(line.startswith("[raylars] epoch") for line in lines) == 4


@pytest.mark.parametrize(("overrides", "texts"), [
    (["model=nonexistent"], ["config error: model=nonexistent", "alexnet_bn", "small_resnet"]),
    (["precision=fp8"], ["config error: precision=fp8", "known: bf16, fp16, fp16_pure, fp32"]),
    (["trainer.num_workers=64"], ["cluster error: the run needs 64 CPUs (64 workers",
                                  "trainer.cpus_per_worker=1", "the embedded cluster has",
                                  "lower trainer.num_workers"]),
])
def test_bad_input_fails_fast(tmp_path, overrides, texts):
    code, output, seconds = _run("run.py", *overrides, f"run.output_dir={tmp_path / 'run'}",
                                 out=tmp_path, timeout_s=120)
    assert code == (2 if "config error" in texts[0] else 1), output
    for text in texts:
        assert text in output, output
    assert "Traceback" not in output
    assert seconds < 60, f"took {seconds:.0f} s"


def test_unreachable_address_fails_fast(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    code, output, seconds = _run("run.py", f"ray.address={address}", out=tmp_path, timeout_s=120)
    assert code == 1, output
    assert f"cluster error: ray.address={address}: nothing answered" in output
    assert "gcs_client" not in output and "Traceback" not in output
    assert seconds < 30, f"took {seconds:.0f} s"


def test_elastic_minimum_waits_only_start_timeout(tmp_path, ray_cluster):
    # The shared cluster has 6 CPUs: 8 workers never fit; the wait is start_timeout_s.
    code, output, seconds = _run(
        "run.py", f"ray.address={ray_cluster}", "trainer.min_workers=8", "trainer.max_workers=10",
        "trainer.start_timeout_s=3", f"run.output_dir={tmp_path / 'run'}", out=tmp_path,
        timeout_s=120)
    assert code == 1, output
    assert "the run needs 8 CPUs (8 workers (trainer.min_workers)" in output
    assert f"the cluster at ray.address={ray_cluster} has 6 CPU" in output
    assert "trainer.start_timeout_s (waited 3 s)" in output
    assert seconds < 60, f"took {seconds:.0f} s"


def _assert_clean_stop(process: subprocess.Popen, out: Path, *, hint: str) -> None:
    pids = _tree_pids(process.pid)
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=90)
    finally:
        _kill_tree(process)
    output = _output(out)
    assert code == 143, output
    assert "[raylars] stopped by SIGTERM; Ray is shut down." in output
    assert hint in output, output
    for crash in ("Aborted", "Stack trace", "*** SIG", "Traceback"):
        assert crash not in output, output
    time.sleep(2)
    alive = [pid for pid in pids[1:] if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"processes of the run still alive: {alive}"


def test_sigterm_stops_run_with_resume_hint(tmp_path):
    run_dir = tmp_path / "run"
    process = _launch("run.py", "trainer.epochs=50", *SMALL, f"run.output_dir={run_dir}",
                      out=tmp_path)
    _wait_for(tmp_path, "[raylars] epoch 2/50", process=process, timeout_s=240)
    _assert_clean_stop(process, tmp_path, hint="trainer.resume_from=")
    resume = (tmp_path / "stderr").read_text().split("trainer.resume_from=")[1].split()[0]
    assert (Path(resume) / "state.pt").is_file() and Path(resume).parent == run_dir / "train"


def test_sigterm_stops_sweep_with_rerun_hint(tmp_path):
    out_dir = tmp_path / "sweep"
    process = _launch("tune.py", "trainer.epochs=3", *SMALL, "tune.lr_min=1", "tune.lr_max=10",
                      "tune.coarse_points_per_decade=1", "tune.warmup_epochs=[0]",
                      f"run.output_dir={out_dir}", out=tmp_path)
    _wait_for(tmp_path, "[raylars tune] plan:", process=process, timeout_s=240)
    time.sleep(10)  # into the first trials
    _assert_clean_stop(process, tmp_path, hint=f"run.output_dir={out_dir}")
