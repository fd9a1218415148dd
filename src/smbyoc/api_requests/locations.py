"""Where a request's data and image live: a SageMaker request names S3 URIs and an ECR image, never a local path.

The CLI hands paths over as ``str`` or :class:`~pathlib.Path`; pathlib turns ``s3://bucket/key`` into
``s3:/bucket/key``, which :func:`uri_text` undoes, so a URI given to a ``click.Path`` option still reads as one.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath

from smbyoc.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COLLAPSED = re.compile(r"^(s3|https|http|file):/(?!/)")
#: The schemes SageMaker's S3-URI members take (botocore's pattern ``(https|s3)://([^/]+)/?(.*)``).
S3_SCHEMES = ("s3", "https")

#: An Amazon ECR image: ``ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]/REPOSITORY[:TAG|@sha256:DIGEST]``.
ECR_IMAGE = re.compile(
    r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})?$"
)
ECR_FORM = "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY[:TAG]"


def uri_text(value: str | os.PathLike[str]) -> str:
    """The text of a location option; a URI that pathlib collapsed (``s3:/bucket/key``) gets its ``//`` back."""
    text = os.fspath(value)
    if isinstance(value, PurePath):
        collapsed = _COLLAPSED.match(text)
        if collapsed is not None:
            text = f"{collapsed.group(1)}://{text[collapsed.end():]}"
    return text


def is_s3_location(text: str) -> bool:
    found = _SCHEME.match(text)
    return found is not None and found.group(1).lower() in S3_SCHEMES


def s3_location(value: str | os.PathLike[str], option: str) -> str:
    """``value`` as the S3 URI a request carries; a local path (or ``file://`` URI) is one ConfigError naming
    ``option``. Bucket and key syntax is left to the request's own pattern check."""
    text = uri_text(value)
    found = _SCHEME.match(text)
    if found is None or found.group(1).lower() == "file":
        raise ConfigError(f"{text} is a local path; SageMaker needs an s3:// URI", key=option)
    if found.group(1).lower() not in S3_SCHEMES:
        raise ConfigError(f"{text} is not an S3 URI; SageMaker needs s3://BUCKET/KEY", key=option)
    return text


def image_problem(image: str) -> str | None:
    """Why SageMaker cannot pull ``image`` from ECR (None when it is an ECR image URI)."""
    if ECR_IMAGE.match(image):
        return None
    return (f"{image!r} is not an ECR image URI ({ECR_FORM}); SageMaker pulls images from Amazon ECR: "
            "push it first (smbyoc push) and give its URI")
