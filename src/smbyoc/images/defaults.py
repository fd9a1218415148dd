"""The default images the emulator runs when the user names none: smbyoc's CPU train and serve images, or the
arm64 ones for a Graviton instance type (``--instance-type ml.c7g.xlarge`` selects ``linux/arm64``)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from smbyoc.images.builder import default_tag, ensure_image

log = logging.getLogger(__name__)


def default_variant(instance_type: str | None = None) -> str:
    """``arm64`` for a Graviton (linux/arm64) instance type, else ``cpu``."""
    from smbyoc.emulator.image_platform import instance_platform

    return "arm64" if instance_platform(instance_type) == "linux/arm64" else "cpu"


def ensure_default_image(client: Any, kind: Literal["train", "serve"], instance_type: str | None = None) -> str:
    """The tag of the default ``kind`` image (``smbyoc/train:cpu``, ``smbyoc/serve:cpu``; ``smbyoc/<kind>:arm64``
    for a Graviton ``instance_type``), built if absent."""
    variant = default_variant(instance_type)
    tag = default_tag(kind, variant)
    log.info("using the default %s image %s (built now if absent)", kind, tag)
    return ensure_image(kind, variant, client=client, progress=log.info)
