"""Tag and push an image through the Docker Engine API, with progress, to any registry.

The engine's push stream (one JSON object per line) is reduced by :class:`PushStream` to a few lines per
layer (``Pushing 12.3 MB`` once, then ``Pushed`` / ``Layer already exists`` / ``Mounted from ...``), the final
digest and size, or one :class:`~smbyoc.errors.DockerError` line when the registry refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smbyoc.docker.client import translate_docker_errors
from smbyoc.errors import DockerError
from smbyoc.push.credentials import RegistryCredentials
from smbyoc.push.manifest import OCI_INDEX, OCI_MANIFEST, PROVENANCE_HINT
from smbyoc.push.repository import Repository

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Layer states worth a line; "Preparing", "Waiting" and the byte-by-byte "Pushing" ticks are not.
_FINAL_STATES = ("Pushed", "Layer already exists", "Mounted from")
_AUTH_WORDS = ("unauthorized", "no basic auth credentials", "authentication required", "denied", "forbidden")
_NETWORK_WORDS = ("dial tcp", "connection refused", "no such host", "i/o timeout", "no route to host",
                  "server gave http response to https client", "tls:", "x509:")
#: Graviton (arm64) runs only inference, on these families (contract-endpoints.md §8.1, "Platform").
GRAVITON_FAMILIES = ("ml.c6g", "ml.c6gd", "ml.c6gn", "ml.c7g", "ml.c8g", "ml.m6g", "ml.m6gd", "ml.m8g", "ml.r6g",
                     "ml.r6gd", "ml.r7gd", "ml.r8g")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover - the loop always returns


def refused_message(reference: str, error: str, *, hint: str | None = None) -> str:
    """One line for an error the engine reported while pushing ``reference``."""
    text = one_line(error)
    lowered = text.lower()
    if any(word in lowered for word in _NETWORK_WORDS):
        return f"push {reference}: cannot reach the registry: {text}"
    if any(word in lowered for word in _AUTH_WORDS):
        return f"push {reference}: the registry refused the credentials: {text}" + (f" ({hint})" if hint else "")
    return f"push {reference}: the registry refused the push: {text}"


@dataclass(frozen=True)
class PushedImage:
    digest: str | None
    size: int | None
    layers_pushed: int
    layers_present: int


class PushStream:
    """Reduces the engine's push events; :meth:`feed` returns a progress line or None, raises on an error."""

    def __init__(self, reference: str, *, auth_hint: str | None = None) -> None:
        self.reference = reference
        self.auth_hint = auth_hint
        self.states: dict[str, str] = {}
        self.digest: str | None = None
        self.size: int | None = None

    def feed(self, event: Mapping[str, Any]) -> str | None:
        if event.get("error") or event.get("errorDetail"):
            detail = event.get("errorDetail") or {}
            message = detail.get("message") if isinstance(detail, dict) else None
            raise DockerError(refused_message(self.reference, message or event.get("error") or "unknown error",
                                              hint=self.auth_hint))
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = str(aux["Digest"])
            self.size = int(aux["Size"]) if isinstance(aux.get("Size"), int) else None
            return None
        status = str(event.get("status") or "")
        layer = event.get("id")
        if not layer:
            return status if status.startswith("The push refers to") else None
        previous = self.states.get(layer)
        if status == "Pushing":
            if previous == "Pushing":
                return None
            self.states[layer] = "Pushing"
            total = (event.get("progressDetail") or {}).get("total")
            return f"{layer}: pushing" + (f" {human_size(total)}" if isinstance(total, int | float) else "")
        if status.startswith(_FINAL_STATES) and previous != status:
            self.states[layer] = status
            return f"{layer}: {status[0].lower()}{status[1:]}"
        if layer not in self.states:
            self.states[layer] = status
        return None

    def result(self) -> PushedImage:
        pushed = sum(1 for s in self.states.values() if s in ("Pushed", "Pushing"))
        present = sum(1 for s in self.states.values() if s.startswith(("Layer already exists", "Mounted from")))
        return PushedImage(digest=self.digest, size=self.size, layers_pushed=pushed, layers_present=present)


def local_image(engine: Any, image: str) -> Any:
    """The local image ``image`` (name, tag or id); DockerError naming it when absent."""
    import docker.errors

    try:
        with translate_docker_errors(f"inspect {image}"):
            return engine.images.get(image)
    except DockerError as e:
        if isinstance(e.__cause__, docker.errors.ImageNotFound):
            raise DockerError(f"no local image {image!r} (build it with `smbyoc build` or `docker build` first)") \
                from e
        raise


def precheck(attrs: Mapping[str, Any], image: str) -> list[str]:
    """What the local image says before the push: refuses an image the engine stores as an OCI manifest or
    index (Docker's containerd image store reports ``Descriptor``); returns notes to print (platform)."""
    descriptor = attrs.get("Descriptor")
    media_type = descriptor.get("mediaType") if isinstance(descriptor, dict) else None
    if media_type in (OCI_INDEX, OCI_MANIFEST):
        raise DockerError(f"{image} is stored as {media_type}, which SageMaker refuses ('Unsupported manifest media "
                          f"type'); {PROVENANCE_HINT}")
    notes = []
    arch, system = attrs.get("Architecture"), attrs.get("Os")
    if system and system != "linux":
        notes.append(f"{image} is a {system} image; SageMaker runs linux images only")
    if arch == "arm64":
        notes.append(f"{image} is linux/arm64: SageMaker runs it only on Graviton inference instances "
                     f"({', '.join(GRAVITON_FAMILIES)}); training and processing need linux/amd64")
    elif arch and arch != "amd64":
        notes.append(f"{image} is linux/{arch}; SageMaker instances are linux/amd64 (or arm64 on Graviton)")
    return notes


def tag_image(engine: Any, image: Any, repository: Repository) -> bool:
    """Tag ``image`` as ``repository.reference``; True when the tag is new (so a failed push removes it)."""
    created = repository.reference not in (image.tags or [])
    with translate_docker_errors(f"tag {repository.reference}"):
        if not image.tag(repository.path, tag=repository.tag):
            raise DockerError(f"tag {repository.reference}: the Docker Engine did not tag the image")
    return created


def untag(engine: Any, reference: str) -> None:
    try:
        with translate_docker_errors(f"remove the tag {reference}"):
            engine.images.remove(reference, noprune=True)
    except DockerError as e:
        logger.warning("%s", e)


def push_stream(engine: Any, repository: Repository, credentials: RegistryCredentials | None) -> Iterable[Any]:
    with translate_docker_errors(f"push {repository.reference}"):
        return engine.api.push(repository.path, tag=repository.tag, stream=True, decode=True,  # type: ignore[no-any-return]
                               auth_config=credentials.auth_config() if credentials else None)


def push(engine: Any, repository: Repository, credentials: RegistryCredentials | None, *,
         progress: Progress | None = None, auth_hint: str | None = None) -> PushedImage:
    """Push ``repository.reference`` (already tagged) and return what the engine reported."""
    stream = PushStream(repository.reference, auth_hint=auth_hint)
    events = push_stream(engine, repository, credentials)
    with translate_docker_errors(f"push {repository.reference}"):
        for event in events:
            line = stream.feed(event) if isinstance(event, dict) else None
            if line and progress:
                progress(line)
    return stream.result()
