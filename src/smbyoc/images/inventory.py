"""The smbyoc images built on this machine (``smbyoc build --list``): what each is, and whether it is stale.

An image is listed when it carries the ``org.smbyoc.kind`` label that :func:`smbyoc.images.builder.image_labels`
sets (images built ``FROM`` an smbyoc image inherit it, and are listed too: they run the same runtime). One row
per tag; untagged images (earlier builds whose tag moved on) are left out. *Stale*: built from another smbyoc
source than this one (:func:`smbyoc.images.wheelhouse.source_fingerprint`), so the emulator would rebuild a
default image before running it (:func:`smbyoc.images.builder.ensure_image`).

The platform is the engine's ``Os``/``Architecture`` (what the image is), not the ``org.smbyoc.platform``
label (what it was built for); they differ only for an image the engine mislabels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from smbyoc.docker.client import translate_docker_errors
from smbyoc.emulator.image_platform import image_platform
from smbyoc.images.builder import (
    KIND_LABEL,
    MULTI_MODELS_LABEL,
    REQUESTED_VARIANT_LABEL,
    SOURCE_LABEL,
    VARIANT_LABEL,
    VERSION_LABEL,
)

logger = logging.getLogger(__name__)

ACCEPT_BIND_TO_PORT_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"
#: Capability name -> the SageMaker label that declares it (``true``).
CAPABILITIES = {"multi-models": MULTI_MODELS_LABEL, "accept-bind-to-port": ACCEPT_BIND_TO_PORT_LABEL}


@dataclass(frozen=True)
class BuiltImage:
    """One tag of an smbyoc image in the local engine."""

    tag: str
    id: str
    variant: str
    kind: str
    platform: str
    size_bytes: int
    created: str
    source: str
    stale: bool
    version: str = ""
    requested_variant: str = ""
    capabilities: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["capabilities"] = list(self.capabilities)
        return data


def capabilities(labels: Mapping[str, str]) -> tuple[str, ...]:
    """The SageMaker capabilities the labels declare (``multi-models``, ``accept-bind-to-port``)."""
    return tuple(name for name, label in CAPABILITIES.items() if str(labels.get(label, "")).lower() == "true")


def from_attrs(attrs: Mapping[str, Any], current_source: str) -> list[BuiltImage]:
    """The rows of one image from its ``docker image inspect`` attributes (one per tag; none if untagged or not
    smbyoc's)."""
    labels = dict((attrs.get("Config") or {}).get("Labels") or {})
    if KIND_LABEL not in labels:
        return []
    tags = [t for t in (attrs.get("RepoTags") or []) if t and t != "<none>:<none>"]
    source = str(labels.get(SOURCE_LABEL, ""))
    return [BuiltImage(
        tag=tag, id=str(attrs.get("Id", "")), variant=str(labels.get(VARIANT_LABEL, "")), kind=str(labels[KIND_LABEL]),
        platform=image_platform(attrs), size_bytes=int(attrs.get("Size") or 0), created=str(attrs.get("Created", "")),
        source=source, stale=source != current_source, version=str(labels.get(VERSION_LABEL, "")),
        requested_variant=str(labels.get(REQUESTED_VARIANT_LABEL, "")), capabilities=capabilities(labels),
    ) for tag in tags]


def rows(images: Iterable[Mapping[str, Any]], current_source: str) -> list[BuiltImage]:
    """Every row of ``images`` (inspect attributes), sorted by tag."""
    return sorted((row for attrs in images for row in from_attrs(attrs, current_source)), key=lambda r: r.tag)


def list_images(client: Any, current_source: str | None = None) -> list[BuiltImage]:
    """The smbyoc images in ``client``'s engine (``current_source``: default, this smbyoc's fingerprint)."""
    if current_source is None:
        from smbyoc.images.wheelhouse import source_fingerprint

        current_source = source_fingerprint()
    with translate_docker_errors("list smbyoc images"):
        found = client.images.list(filters={"label": KIND_LABEL, "dangling": False})
        return rows((image.attrs for image in found), current_source)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def table(images: list[BuiltImage]) -> str:
    """The rows as an aligned text table (``smbyoc build --list``)."""
    header = ("TAG", "VARIANT", "KIND", "PLATFORM", "SIZE", "CREATED", "SOURCE", "STALE", "CAPABILITIES")
    lines = [header]
    for image in images:
        variant = image.variant + (f" (asked: {image.requested_variant})" if image.requested_variant else "")
        lines.append((image.tag, variant, image.kind, image.platform, _size(image.size_bytes),
                      image.created[:19].replace("T", " "), image.source, "yes" if image.stale else "no",
                      ",".join(image.capabilities) or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
