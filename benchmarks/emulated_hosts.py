"""Emulated hosts for benchmarks/comms_bench.py: one network namespace per host, joined
through a private switch namespace by veth pairs whose egress tc shapes (tbf for a rate,
netem for a delay where the kernel has it, else benchmarks/delay_relay.py as the switch).

Needs root. Addresses are private 10.213.0.x inside those namespaces only; nothing is
reachable from outside. Standard library only, so tests can import it as
`benchmarks.emulated_hosts` and the benchmark as its sibling `emulated_hosts`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SUBNET = "10.213.0"
DELAY_RELAY = Path(__file__).resolve().parent / "delay_relay.py"


class EmulatedHosts:
    """Network namespaces, one per emulated host, joined in a switch namespace by a bridge,
    or by benchmarks/delay_relay.py when --delay-ms is asked of a kernel without netem."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.tag = args, f"rlc{os.getpid() % 100000}"
        self.delay_via: str | None = None
        self.relay: subprocess.Popen | None = None

    def namespace(self, host: int) -> str:
        return f"{self.tag}h{host}"

    def interface(self, host: int) -> str:
        return f"{self.tag}e{host}"

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def create(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("--emulate-hosts needs root (ip netns, tc)")
        switch = f"{self.tag}sw"
        self._ip("netns", "add", switch)
        self.delay_via = ("netem" if self._kernel_has_netem() else "relay") \
            if self.args.delay_ms else None
        if self.delay_via != "relay":
            self._ip("-n", switch, "link", "add", "br0", "type", "bridge")
            self._ip("-n", switch, "link", "set", "br0", "up")
        for host in range(self.args.emulate_hosts):
            ns, dev, peer = self.namespace(host), self.interface(host), f"{self.tag}p{host}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer,
                     "netns", switch)
            if self.delay_via == "relay":
                self._ip("-n", switch, "link", "set", peer, "up")
            else:
                self._ip("-n", switch, "link", "set", peer, "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._shape(ns, dev)
        if self.delay_via == "relay":
            self._start_relay(switch)

    def _kernel_has_netem(self) -> bool:
        """Try a netem qdisc on a throwaway veth in the switch namespace."""
        switch = f"{self.tag}sw"
        self._ip("-n", switch, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        done = subprocess.run(["ip", "netns", "exec", switch, "tc", "qdisc", "add", "dev",
                               "probe0", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True)
        self._ip("-n", switch, "link", "del", "probe0")
        return done.returncode == 0

    def _start_relay(self, switch: str) -> None:
        """No netem: the switch is benchmarks/delay_relay.py, which holds every frame
        --delay-ms before forwarding it."""
        ports = [f"{self.tag}p{host}" for host in range(self.args.emulate_hosts)]
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", switch, sys.executable, str(DELAY_RELAY),
             "--delay-ms", str(self.args.delay_ms), *ports],
            stdout=subprocess.PIPE, text=True)
        line = self.relay.stdout.readline().strip()
        if line != "ready":
            self.relay.kill()
            raise SystemExit(f"--emulate-hosts: the delay relay did not start ({line!r})")

    def _shape(self, ns: str, dev: str) -> None:
        rate, delay = self.args.rate_mbit, self.args.delay_ms
        if delay and self.delay_via == "netem":
            spec = ["netem", "delay", f"{delay}ms"] + (["rate", f"{rate}mbit"] if rate else [])
        elif rate:
            # tbf: burst must hold at least one timer tick of data at this rate.
            burst = max(32 * 1024, int(rate * 1e6 / 8 / 250))
            spec = ["tbf", "rate", f"{rate}mbit", "burst", str(burst), "latency", "100ms"]
        else:
            return
        done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
                               "root", *spec], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--emulate-hosts: the kernel refused tc qdisc {spec[0]}: "
                             f"{done.stderr.strip()}")

    def destroy(self) -> None:
        if self.relay is not None:
            self.relay.terminate()
            self.relay.wait()
        for host in range(self.args.emulate_hosts):
            subprocess.run(["ip", "netns", "del", self.namespace(host)], capture_output=True)
        subprocess.run(["ip", "netns", "del", f"{self.tag}sw"], capture_output=True)

    @staticmethod
    def _ip(*words: str) -> None:
        done = subprocess.run(["ip", *words], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--emulate-hosts: `ip {' '.join(words)}` failed: "
                             f"{done.stderr.strip()}")

