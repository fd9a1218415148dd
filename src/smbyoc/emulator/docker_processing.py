"""Docker mode for processing jobs: ``docker run IMAGE`` per host, as SageMaker Processing does.

The engine is training's (:class:`~smbyoc.emulator.docker_training.DockerJobBackend`: one network with every
host at a fixed address and in every ``/etc/hosts``, the instance type's CPU and memory, no network with
``EnableNetworkIsolation``, a failing host stops the others, containers and network always removed, files
given back to the invoking user). What differs is what runs (contract-endpoints.md §7.1):

* no ``train``/``serve`` argument: neither ``ContainerEntrypoint`` nor ``ContainerArguments`` → the image's
  ``ENTRYPOINT``/``CMD``; only the entrypoint → it, the image's ``ENTRYPOINT`` and ``CMD`` ignored; only the
  arguments → the image's ``ENTRYPOINT`` with them; both → entrypoint + arguments;
* the environment is the request's ``Environment`` alone;
* each host's ``config`` (``processingjobconfig.json``, ``resourceconfig.json``), ``output`` (``message``) and
  ``processing`` (every input and output ``LocalPath``) folders are mounted at ``/opt/ml/config``,
  ``/opt/ml/output`` and ``/opt/ml/processing``;
* stopping sends ``SIGINT``, then ``SIGKILL`` after the stop timeout ("Processing uses SIGINT and SIGKILL").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smbyoc.emulator.docker_training import CONTAINER_ML, DockerJobBackend
from smbyoc.emulator.layout import HostTree
from smbyoc.emulator.processing_spec import ProcessingJobSpec

#: The host folders of a processing tree and where they are mounted.
MOUNTED = ("config", "output", "processing")


def command_args(entrypoint: tuple[str, ...] | None, arguments: tuple[str, ...] | None) -> dict[str, Any]:
    """``containers.create`` ``entrypoint``/``command`` for the four override cases (none given: neither key,
    so the image's ENTRYPOINT and CMD run). An empty ``command`` with an entrypoint keeps the image's CMD out,
    as the engine merges the image's CMD only when no entrypoint is given."""
    if entrypoint is not None:
        return {"entrypoint": list(entrypoint), "command": list(arguments or ())}
    if arguments is not None:
        return {"command": list(arguments)}
    return {}


@dataclass
class DockerProcessingBackend(DockerJobBackend[ProcessingJobSpec]):
    """``docker run IMAGE`` per host of a processing job (see the module docstring)."""

    #: What ``docker stop`` sends first (the container's StopSignal).
    stop_signal: str = "SIGINT"

    def mounts(self, tree: HostTree) -> dict[str, dict[str, str]]:
        return {str(tree.root / name): {"bind": f"{CONTAINER_ML}/{name}", "mode": "rw"} for name in MOUNTED}

    def process_args(self, spec: ProcessingJobSpec, tree: HostTree) -> dict[str, Any]:
        return {**command_args(spec.entrypoint, spec.arguments), "environment": dict(spec.environment),
                "volumes": self.mounts(tree), "stop_signal": self.stop_signal}
