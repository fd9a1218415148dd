"""The platform check: SageMaker starts an image only on instances of the image's architecture.

Graviton instance types (``ml.c6g``, ``ml.c7g``, ``ml.m6g``, ``ml.r6g``, ... in
:mod:`smbyoc.emulator.instance_types`) are ``linux/arm64``; every other ML instance type is ``linux/amd64``
(contract-endpoints.md §8.1). An image built for the other architecture fails there with ``exec format error``
before it logs anything; the emulator refuses it the same way, in one line naming both, before any container
starts (``local-train``, every container of every variant of ``local-serve``, ``local-transform``).

Not checked, by choice (docs/images.md):

* ``local`` / ``local_gpu``: no SageMaker instance is emulated; the engine runs what it can (an arm64 image
  under qemu user emulation on an x86_64 machine, as SDK local mode does).
* process mode: there is no image. The runtime runs on this machine's Python, whose packages are this
  machine's; refusing ``ml.c7g`` on an x86_64 laptop would only make process mode useless for Graviton
  endpoints. ``smbyoc validate --instance-type`` checks an image's platform without running it.

The image's platform is the engine's ``Os``/``Architecture`` (``docker image inspect``), never a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smbyoc.emulator.instance_types import LOCAL_TYPES, lookup
from smbyoc.errors import ConfigError

#: Docker's architecture names for the machine names the engine and ``uname -m`` use.
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def instance_platform(instance_type: str | None) -> str | None:
    """``linux/amd64`` or ``linux/arm64`` for an ML instance type; None for ``local``/``local_gpu`` or none."""
    if instance_type is None or instance_type in LOCAL_TYPES:
        return None
    arch = lookup(instance_type).arch
    return f"linux/{ARCHITECTURES.get(arch, arch)}"


def image_platform(attrs: Mapping[str, Any]) -> str:
    """``os/arch`` of an image from its ``docker image inspect`` attributes (``linux/amd64`` when unsaid)."""
    os_name = str(attrs.get("Os") or "linux")
    arch = str(attrs.get("Architecture") or "amd64")
    return f"{os_name}/{ARCHITECTURES.get(arch, arch)}"


def check(image: str, attrs: Mapping[str, Any], instance_type: str | None) -> None:
    """ConfigError (one line naming both) when ``image`` cannot start on ``instance_type``'s platform."""
    wanted = instance_platform(instance_type)
    if wanted is None:
        return
    found = image_platform(attrs)
    if found == wanted:
        return
    if wanted == "linux/arm64":
        fix = ("build it for linux/arm64 (smbyoc build --variant arm64, or docker buildx build --platform "
               "linux/arm64) or choose an x86 instance type")
        what = "a Graviton (linux/arm64) instance type"
    else:
        fix = ("build it for linux/amd64 (smbyoc build --variant cpu, or docker buildx build --platform linux/amd64) "
               "or choose a Graviton instance type such as ml.c7g.xlarge" if found == "linux/arm64"
               else "build it for linux/amd64")
        what = "an x86 (linux/amd64) instance type"
    raise ConfigError(f"image {image} is {found} but {instance_type} is {what}: SageMaker would fail to start it "
                      f"(exec format error); {fix}")
