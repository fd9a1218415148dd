"""The preprocessing example: the first container of a serial inference pipeline in front of the default example.

``inference.py`` (standard library only) turns field readings (degrees Fahrenheit, psi, gaps) into the features
the default example's model was trained on, with the fixed parameters of ``model/scaling.json``; the
``Dockerfile`` bakes it into smbyoc's serve image. Run it (docs/multi-container.md)::

    smbyoc local-serve --container smbyoc/preprocess:cpu:<this dir>/model --container smbyoc/serve:cpu:<model.tar.gz>

Importing this module reads nothing and builds nothing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_TAG", "ensure_preprocessing_image", "model_dir", "process_environment", "source_dir"]

log = logging.getLogger(__name__)

#: The tag :func:`ensure_preprocessing_image` gives the image.
IMAGE_TAG = "smbyoc/preprocess:cpu"
#: Image label: a digest of the serve image it was built on and of the files baked in.
DIGEST_LABEL = "org.smbyoc.example-digest"
_CONTEXT_FILES = ("Dockerfile", "inference.py")


def source_dir() -> Path:
    """This directory: ``inference.py`` (the handler) and the ``Dockerfile``."""
    return Path(__file__).resolve().parent


def model_dir() -> Path:
    """The preprocessing container's model: a directory holding ``scaling.json``."""
    return source_dir() / "model"


def process_environment() -> dict[str, str]:
    """The environment that makes smbyoc's ``serve`` (process mode) run this handler, as the image does."""
    return {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(source_dir())}


def _digest(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for name in _CONTEXT_FILES:
        digest.update(name.encode())
        digest.update((source_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_preprocessing_image(client: Any, *, base_image: str | None = None,
                               progress: Callable[[str], None] | None = None) -> str:
    """The tag of the preprocessing image (:data:`IMAGE_TAG`), built on ``smbyoc/serve:cpu`` (itself built first
    when absent, on ``base_image`` if given) unless an image built from the same serve image and files exists.
    The build installs nothing, so it needs no network."""
    from smbyoc.docker.client import translate_docker_errors
    from smbyoc.images.builder import ensure_image

    serve = ensure_image("serve", "cpu", client=client, base_image=base_image, progress=progress)
    with translate_docker_errors(f"inspect {serve}"):
        base_id = str(client.images.get(serve).id)
    digest = _digest(base_id)
    import docker.errors

    with translate_docker_errors(f"inspect {IMAGE_TAG}"):
        try:
            existing = client.images.get(IMAGE_TAG)
        except docker.errors.ImageNotFound:
            existing = None
    if existing is not None and (existing.labels or {}).get(DIGEST_LABEL) == digest:
        return IMAGE_TAG
    log.info("building %s on %s", IMAGE_TAG, serve)
    if progress is not None:
        progress(f"building {IMAGE_TAG} on {serve}")
    with tempfile.TemporaryDirectory(prefix="smbyoc-preprocess.") as tmp:
        for name in _CONTEXT_FILES:
            shutil.copyfile(source_dir() / name, Path(tmp) / name)
        with translate_docker_errors(f"build {IMAGE_TAG}"):
            client.images.build(path=tmp, tag=IMAGE_TAG, buildargs={"BASE_IMAGE": serve}, rm=True, pull=False,
                                labels={DIGEST_LABEL: digest})
    return IMAGE_TAG
