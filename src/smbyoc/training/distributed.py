"""Multi-host helpers: waiting for the other hosts' names, and the opt-in ``torchrun`` launcher.

**Host names.** In a multi-host job every container gets the same image and a ``resourceconfig.json``
that differs only in ``current_host``; the names ``algo-1..N`` may not resolve at once, so the runtime
retries (contract.md §1.9 — the toolkit retries ``gethostbyname`` for up to 15 minutes with exponential
backoff from 100 ms, capped at 30 s). :func:`wait_for_hosts` does the same, bounded by
``SMBYOC_HOST_RESOLUTION_TIMEOUT``, skipped for one host or when ``SM_STUDIO_LOCAL_MODE=true``.

**torchrun.** With ``SMBYOC_LAUNCHER=torchrun``, ``train`` starts a ``.py`` program through
``python -m torch.distributed.run`` with a static rendezvous at the first host
(:class:`TorchDistributedSettings`): ``--nnodes`` = number of hosts, ``--nproc-per-node`` =
``SMBYOC_NPROC_PER_NODE`` or the GPU count or 1, ``--node-rank`` = index of ``current_host``,
``--master-addr`` = the first host (``127.0.0.1`` in a one-host job, which needs no name resolution),
``--master-port`` = ``SMBYOC_MASTER_PORT`` (default 29500). torchrun then sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` for each worker.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smbyoc.environment_variables import (
    SM_STUDIO_LOCAL_MODE,
    SMBYOC_HOST_RESOLUTION_TIMEOUT,
    SMBYOC_MASTER_PORT,
    SMBYOC_NPROC_PER_NODE,
)
from smbyoc.errors import ConfigError, SmbyocError

log = logging.getLogger(__name__)

#: First backoff delay and its cap, as the training toolkit (seconds).
BACKOFF_START = 0.1
BACKOFF_MAX = 30.0


class HostResolutionError(SmbyocError):
    """Some host names of a multi-host job never resolved."""

    def __init__(self, hosts: Sequence[str], timeout: float) -> None:
        self.hosts = list(hosts)
        super().__init__(
            f"host name{'s' if len(hosts) != 1 else ''} never resolved within {timeout:g} s "
            f"(SMBYOC_HOST_RESOLUTION_TIMEOUT): {', '.join(hosts)}")


def _resolve(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


def wait_for_hosts(
    hosts: Sequence[str],
    timeout: float | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    resolve: Callable[[str], bool] = _resolve,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once every name in ``hosts`` resolves; raise :class:`HostResolutionError` after ``timeout``.

    One host (or none) and ``SM_STUDIO_LOCAL_MODE=true`` return at once. ``timeout`` defaults to
    ``SMBYOC_HOST_RESOLUTION_TIMEOUT`` (900 s). Retries back off exponentially from 0.1 s up to 30 s,
    never sleeping past the deadline.
    """
    if len(hosts) <= 1:
        return
    if SM_STUDIO_LOCAL_MODE.get(environ):
        log.info("SM_STUDIO_LOCAL_MODE is set; not waiting for host names")
        return
    limit = SMBYOC_HOST_RESOLUTION_TIMEOUT.get(environ) if timeout is None else timeout
    deadline = clock() + limit
    pending = list(hosts)
    delay = BACKOFF_START
    while True:
        pending = [host for host in pending if not resolve(host)]
        if not pending:
            log.info("all %d host names resolve", len(hosts))
            return
        remaining = deadline - clock()
        if remaining <= 0:
            raise HostResolutionError(pending, limit)
        log.info("waiting for host names to resolve: %s", ", ".join(pending))
        sleep(min(delay, remaining))
        delay = min(delay * 2, BACKOFF_MAX)


@dataclass(frozen=True)
class TorchDistributedSettings:
    """Static torchrun rendezvous for the job's hosts."""

    master_addr: str
    master_port: int
    nnodes: int
    nproc_per_node: int
    node_rank: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @classmethod
    def from_hosts(
        cls,
        hosts: Sequence[str],
        current_host: str,
        *,
        num_gpus: int = 0,
        master_port: int | None = None,
        nproc_per_node: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TorchDistributedSettings:
        if not hosts:
            raise ConfigError("no hosts", key="resourceconfig.json hosts")
        if current_host not in hosts:
            raise ConfigError(f"{current_host!r} is not one of the hosts {list(hosts)}",
                              key="resourceconfig.json current_host")
        port = SMBYOC_MASTER_PORT.get(environ) if master_port is None else master_port
        nproc = nproc_per_node if nproc_per_node is not None else SMBYOC_NPROC_PER_NODE.get(environ)
        if nproc is None:
            nproc = num_gpus if num_gpus > 0 else 1
        master = hosts[0] if len(hosts) > 1 else "127.0.0.1"
        return cls(master_addr=master, master_port=port, nnodes=len(hosts), nproc_per_node=nproc,
                   node_rank=list(hosts).index(current_host))

    @classmethod
    def from_training_env(cls, env: Any, *, environ: Mapping[str, str] | None = None,
                          master_port: int | None = None,
                          nproc_per_node: int | None = None) -> TorchDistributedSettings:
        """From a :class:`~smbyoc.training.env.TrainingEnv` (hosts, current_host, num_gpus)."""
        return cls.from_hosts(env.hosts, env.current_host, num_gpus=env.num_gpus, master_port=master_port,
                              nproc_per_node=nproc_per_node, environ=environ)

    def to_env(self) -> dict[str, str]:
        """Variables for ``init_process_group("env://")``.

        ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``NNODES``, ``NPROC_PER_NODE``;
        with one process per host also ``RANK`` (= node rank) and ``LOCAL_RANK`` (0). With several
        processes per host torchrun sets ``RANK``/``LOCAL_RANK`` for each worker.
        """
        env = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "WORLD_SIZE": str(self.world_size),
            "NODE_RANK": str(self.node_rank),
            "NNODES": str(self.nnodes),
            "NPROC_PER_NODE": str(self.nproc_per_node),
        }
        if self.nproc_per_node == 1:
            env["RANK"] = str(self.node_rank)
            env["LOCAL_RANK"] = "0"
        return env

    def torchrun_argv(self, program: str, args: Sequence[str] = (), *, python: str | None = None) -> list[str]:
        """``python -m torch.distributed.run --nnodes ... program *args``."""
        return [
            python or sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(self.nnodes),
            "--nproc-per-node", str(self.nproc_per_node),
            "--node-rank", str(self.node_rank),
            "--master-addr", self.master_addr,
            "--master-port", str(self.master_port),
            program, *args,
        ]
