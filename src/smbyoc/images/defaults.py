"""The default images the emulator runs when the user names none: smbyoc's CPU train and serve images."""

from __future__ import annotations

import logging
from typing import Any, Literal

from smbyoc.images.builder import default_tag, ensure_image

log = logging.getLogger(__name__)


def ensure_default_image(client: Any, kind: Literal["train", "serve"]) -> str:
    """The tag of the default ``kind`` image (``smbyoc/train:cpu``, ``smbyoc/serve:cpu``), built if absent."""
    tag = default_tag(kind, "cpu")
    log.info("using the default %s image %s (built now if absent)", kind, tag)
    return ensure_image(kind, "cpu", client=client, progress=log.info)
