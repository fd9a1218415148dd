"""Docker plumbing shared by emulated training jobs and endpoints.

Every container and network the emulator creates carries the label ``com.smbyoc.owner`` so that it can
be found and removed, also after a crash (:func:`remove_leftovers`), and the ``com.smbyoc.owner-*`` labels
naming the emulator process that owns it (:class:`~smbyoc.emulator.owners.Owner`): when that process is
gone (``kill -9``), :func:`remove_orphans` removes them. Docker SDK errors are translated by
:func:`smbyoc.docker.client.translate_docker_errors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smbyoc.docker.client import translate_docker_errors
from smbyoc.emulator import image_platform
from smbyoc.emulator.owners import Owner
from smbyoc.errors import ConfigError, DockerError

log = logging.getLogger(__name__)

OWNER_LABEL = "com.smbyoc.owner"
JOB_LABEL = "com.smbyoc.job"
HOST_LABEL = "com.smbyoc.host"

HostLineSink = Callable[[str, str], None]


def unique_suffix() -> str:
    return secrets.token_hex(3)


def labels(job: str, host: str | None = None) -> dict[str, str]:
    """The labels of a container or network of ``job``, owned by this process."""
    result = {OWNER_LABEL: "smbyoc", JOB_LABEL: job, **Owner.current().labels()}
    if host is not None:
        result[HOST_LABEL] = host
    return result


def require_image(client: Any, image: str, *, instance_type: str | None = None) -> Any:
    """The engine's ``image``; DockerError (one line) when absent. With ``instance_type``, also ConfigError when
    the image's platform is not the instance's (:func:`smbyoc.emulator.image_platform.check`)."""
    import docker.errors

    if not image.strip():
        raise ConfigError("the image name is empty", key="image")
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound as e:
        raise DockerError(
            f"image {image!r} is not present in the local Docker Engine; build it with `smbyoc build` "
            "or `docker build`/`docker pull` it first"
        ) from e
    except docker.errors.APIError as e:
        raise DockerError(f"Docker Engine error looking up image {image!r}: {e.explanation or e}") from e
    except docker.errors.DockerException as e:  # (the SDK's own refusals: NullResource, InvalidRepository...)
        raise DockerError(f"image {image!r}: {e}") from e
    if instance_type is not None:
        image_platform.check(image, getattr(found, "attrs", None) or {}, instance_type)
    return found


def stream_logs(container: Any, host: str, sink: HostLineSink) -> threading.Thread:
    """Follow a container's output in a daemon thread, one call of ``sink(host, line)`` per line."""

    def pump() -> None:
        buffer = b""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    sink(host, line.decode("utf-8", "replace"))
            if buffer:
                sink(host, buffer.decode("utf-8", "replace"))
        except Exception as e:  # the container went away: nothing more to show
            log.debug("log stream of %s ended: %s", host, e)

    thread = threading.Thread(target=pump, name=f"logs-{host}", daemon=True)
    thread.start()
    return thread


def remove_quietly(obj: Any, what: str) -> None:
    """Remove a container (forced) or network, logging instead of raising: used in ``finally`` blocks."""
    if obj is None:
        return
    try:
        if hasattr(obj, "kill") and hasattr(obj, "remove"):
            obj.remove(force=True, v=True)
        else:
            obj.remove()
    except Exception as e:
        if "No such" not in str(e) and "404" not in str(e):
            log.warning("could not remove %s: %s", what, e)


def remove_leftovers(client: Any) -> int:
    """Remove every container and network smbyoc created (e.g. after a crash); returns how many."""
    count = 0
    with translate_docker_errors("remove leftover containers and networks"):
        for container in client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}=smbyoc"}):
            remove_quietly(container, container.name)
            count += 1
        for network in client.networks.list(filters={"label": f"{OWNER_LABEL}=smbyoc"}):
            remove_quietly(network, network.name)
            count += 1
    return count


def owned_resources(client: Any) -> list[tuple[str, Any, Owner | None]]:
    """``(kind, object, owner)`` of every smbyoc container and network, containers first; the owner is
    None for resources created before owners were recorded."""
    label = {"label": f"{OWNER_LABEL}=smbyoc"}
    with translate_docker_errors("list smbyoc containers and networks"):
        found: list[tuple[str, Any, Owner | None]] = [
            ("container", c, Owner.from_labels(c.labels or {}))
            for c in client.containers.list(all=True, filters=label)]
        found += [("network", n, Owner.from_labels(n.attrs.get("Labels") or {}))
                  for n in client.networks.list(filters=label)]
    return found


def remove_orphans(client: Any, owner: Owner | None = None) -> list[str]:
    """Remove the containers and networks whose owner is gone (only ``owner``'s when given); their names."""
    removed = []
    for kind, obj, found in owned_resources(client):
        if found is None or (owner is not None and found != owner) or found.alive():
            continue
        remove_quietly(obj, f"{kind} {obj.name}")
        removed.append(f"{kind} {obj.name}")
    return removed


def invoking_owner() -> tuple[int, int]:
    """The user whose files the job should leave behind: the sudo caller under sudo, else ourselves."""
    if os.getuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
        return int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", os.environ["SUDO_UID"]))
    return os.getuid(), os.getgid()


def chown_tree(client: Any, image: str, root: Path, owner: tuple[int, int], *, use_container: bool) -> None:
    """Give ``root`` (written by root inside containers) back to ``owner``.

    As root on the host this is a plain walk; otherwise a short-lived container of ``image`` does it,
    since only root may change the owner of root's files.
    """
    uid, gid = owner
    if not use_container and os.getuid() == 0:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(name, uid, gid, follow_symlinks=False)
        return
    try:
        client.containers.run(
            image, entrypoint=["chown", "-R", f"{uid}:{gid}", "/smbyoc-tree"], user="0:0",
            volumes={str(root): {"bind": "/smbyoc-tree", "mode": "rw"}}, remove=True, network_disabled=True,
            labels={OWNER_LABEL: "smbyoc", **Owner.current().labels()},
        )
    except Exception as e:
        log.warning("could not give %s back to uid %d (the image has no chown?): %s", root, uid, e)


def resource_args(instance: Any, user: str | None, *, host_cpus: int | None = None) -> dict[str, Any]:
    """``docker run`` limits for an instance type (vCPUs, memory; none for ``local``) and the user.

    An instance with more vCPUs than this machine has gets all of the machine's CPUs (the engine refuses a
    larger ``--cpus``), with one warning; the job still sees the instance's vCPU count in its resource config.
    """
    import os

    args: dict[str, Any] = {}
    if instance.vcpus is not None:
        vcpus = float(instance.vcpus)
        available = host_cpus if host_cpus is not None else (os.cpu_count() or 1)
        if vcpus > available:
            log.warning("%s has %g vCPUs and this machine %d: its containers get all %d CPUs", instance.name,
                        vcpus, available, available)
            vcpus = float(available)
        args["nano_cpus"] = int(vcpus * 1e9)
    if instance.memory_bytes is not None:
        args["mem_limit"] = instance.memory_bytes
    if user is not None:
        args["user"] = user
    return args
