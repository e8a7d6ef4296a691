"""torch.distributed's rendezvous store, listening on the master address only.

Ray Train sets up each worker group's process group through a TCPStore served by rank 0
at MASTER_ADDR:MASTER_PORT; torch binds that server to every interface ("::"), whatever
the address. `StoreOnMasterAddrConfig` is Ray Train's TorchConfig with one step first: each
worker's store server listens on a socket bound to the master address itself (127.0.0.1
on the embedded cluster, the node's address on a real one), which is all the ranks use.
"""

from __future__ import annotations

import importlib
import socket

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def bind_store_to_master_addr() -> None:
    """In a worker process: rank 0's rendezvous store serves on a socket bound to the
    host name it is given (torch.distributed.rendezvous creates it)."""
    from torch.distributed import TCPStore

    # The module (torch.distributed.rendezvous is also the name of a function there).
    rendezvous = importlib.import_module("torch.distributed.rendezvous")

    original = getattr(rendezvous._create_c10d_store, "__wrapped__", rendezvous._create_c10d_store)

    def create_store(hostname, port, rank, world_size, timeout, use_libuv=True):
        if rank != 0 or rendezvous._agent_store_serves(hostname, port):
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
        listener = socket.create_server((hostname, port), family=family, backlog=1024)
        return TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True,
                        timeout=timeout, multi_tenant=True, use_libuv=use_libuv,
                        master_listen_fd=listener.detach())

    create_store.__wrapped__ = original
    rendezvous._create_c10d_store = create_store


class _StoreOnMasterAddrBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        worker_group.execute(bind_store_to_master_addr)
        super().on_start(worker_group, backend_config)


class StoreOnMasterAddrConfig(TorchConfig):
    """TorchConfig whose rendezvous store listens on the master address only."""

    @property
    def backend_cls(self):
        return _StoreOnMasterAddrBackend
