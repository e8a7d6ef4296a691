"""A user-space Ethernet switch that delays every frame: link latency for the emulated hosts
of benchmarks/comms_bench.py on kernels without `sch_netem`.

Usage (root, inside the switch namespace; benchmarks/emulated_hosts.py starts it):
    python benchmarks/delay_relay.py --delay-ms D PORT [PORT ...]

Each PORT is the switch-side end of a veth pair. Frames are read from every port with a
raw packet socket, held until D ms after they arrived, and sent out of the port their
destination MAC was last seen on (all other ports until it is known, and for broadcast).
The sockets use PACKET_VNET_HDR, so a frame keeps its offload state: a 64 KB TCP
super-packet (GSO) crosses as one frame and its checksum is finished by the kernel on the
way out. That keeps the frame rate near 2,000/s per Gbit/s, which Python can carry.
Rate shaping stays with tc tbf on the hosts' side. Prints "ready" once every port is open.
"""

from __future__ import annotations

import argparse
import collections
import signal
import socket
import sys
import threading
import time

SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
VNET_HDR_BYTES = 10  # struct virtio_net_hdr
MAX_FRAME = 1 << 18  # a GSO frame is up to 64 KB; BIG TCP allows more


def open_port(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((name, 0))
    return sock


class DelaySwitch:
    def __init__(self, ports: list[str], *, delay_s: float):
        if len(ports) < 2:
            raise ValueError("the relay needs at least 2 ports")
        if delay_s < 0:
            raise ValueError(f"--delay-ms must be >= 0, got {delay_s * 1e3}")
        self.delay_s = delay_s
        self.sockets = [open_port(name) for name in ports]
        self.queues = [collections.deque() for _ in ports]
        self.ready = [threading.Condition() for _ in ports]
        self.where: dict[bytes, int] = {}  # MAC -> port index

    def start(self) -> None:
        for index in range(len(self.sockets)):
            threading.Thread(target=self._receive, args=(index,), daemon=True).start()
            threading.Thread(target=self._send, args=(index,), daemon=True).start()

    def _receive(self, index: int) -> None:
        sock = self.sockets[index]
        while True:
            frame, address = sock.recvfrom(MAX_FRAME)
            if address[2] == PACKET_OUTGOING:  # our own sends out of this port
                continue
            due = time.monotonic() + self.delay_s
            ethernet = frame[VNET_HDR_BYTES:]
            destination, source = ethernet[:6], ethernet[6:12]
            self.where[source] = index
            target = self.where.get(destination) if not destination[0] & 1 else None
            targets = [target] if target is not None else [
                t for t in range(len(self.sockets)) if t != index]
            for out in targets:
                if out == index:
                    continue
                with self.ready[out]:
                    self.queues[out].append((due, frame))
                    self.ready[out].notify()

    def _send(self, index: int) -> None:
        # One queue per output port in arrival order: with a fixed delay, due times are
        # already sorted, so a FIFO is the whole scheduler.
        sock, queue, ready = self.sockets[index], self.queues[index], self.ready[index]
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, frame = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sock.send(frame)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("ports", nargs="+")
    args = ap.parse_args(argv)
    try:
        switch = DelaySwitch(args.ports, delay_s=args.delay_ms / 1e3)
    except (OSError, ValueError) as error:
        raise SystemExit(f"delay_relay: {error}") from error
    switch.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
