"""The emulated hosts of benchmarks/comms_bench.py (benchmarks/emulated_hosts.py) delay
their link as asked and carry bytes intact, whether the delay comes from netem or from the
user-space relay."""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest

DELAY_MS = 20.0
# benchmarks/ is scripts, not an installed package: load the module from its file (it
# imports the standard library only).
EMULATED_HOSTS = Path(__file__).resolve().parents[2] / "benchmarks" / "emulated_hosts.py"

SERVER = textwrap.dedent("""
    import socket, sys
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((sys.argv[1], 5555)); server.listen(1)
    print("listening", flush=True)
    conn, _ = server.accept()
    while data := conn.recv(1 << 16):
        conn.sendall(data)  # echo
""")

CLIENT = textwrap.dedent("""
    import json, random, socket, sys, threading, time
    for _ in range(50):
        try:
            conn = socket.create_connection((sys.argv[1], 5555), timeout=10); break
        except ConnectionRefusedError:
            time.sleep(0.1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(5):
        start = time.perf_counter(); conn.sendall(b"x"); conn.recv(1)
        rtts.append(time.perf_counter() - start)
    payload = random.Random(0).randbytes(4 << 20)
    # Send from a thread while reading the echo, or both sides' buffers fill and stall.
    threading.Thread(target=conn.sendall, args=(payload,), daemon=True).start()
    echoed = bytearray()
    while len(echoed) < len(payload):
        echoed += conn.recv(1 << 16)
    print(json.dumps({"rtt_ms": min(rtts) * 1e3, "same": bytes(echoed) == payload}))
""")


@pytest.fixture
def emulated_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("emulated hosts need root, ip and tc")
    probe = f"rlcprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot create network namespaces: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], check=True)
    spec = importlib.util.spec_from_file_location("emulated_hosts", EMULATED_HOSTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    hosts = module.EmulatedHosts(Namespace(emulate_hosts=2, rate_mbit=200.0, delay_ms=DELAY_MS))
    hosts.create()
    yield hosts
    hosts.destroy()


def test_link_is_delayed_and_lossless(emulated_hosts):
    import json

    hosts = emulated_hosts
    assert hosts.delay_via in ("netem", "relay")
    server = subprocess.Popen(["ip", "netns", "exec", hosts.namespace(1), sys.executable, "-c",
                               SERVER, hosts.address(1)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        done = subprocess.run(["ip", "netns", "exec", hosts.namespace(0), sys.executable, "-c",
                               CLIENT, hosts.address(1)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
    finally:
        server.kill()
    # One-way delay each way: the round trip is at least twice the delay.
    assert 2 * DELAY_MS <= result["rtt_ms"] < 2 * DELAY_MS + 30
    assert result["same"]
