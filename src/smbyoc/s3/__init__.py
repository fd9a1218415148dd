"""S3 where users have it: ``s3://`` channels, model data, code, outputs and checkpoints (docs/s3.md).

Host-side only (never imported by the in-image runtime); boto3 is imported on first use, through
:mod:`smbyoc.aws.client`, which checks the credential chain and translates botocore's errors.

* :class:`S3Uri` / :func:`is_s3_uri`: checked ``s3://bucket/key`` URIs (:mod:`smbyoc.s3.uri`);
* :func:`download` / :func:`upload_file`: one call each, through the ETag cache (:mod:`smbyoc.s3.cache`) and
  boto3's managed transfer (:mod:`smbyoc.s3.transfer`);
* :class:`~smbyoc.s3.staging.Staging`: a job's locations resolved to local paths before it runs, its outputs
  uploaded after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from smbyoc.s3.uri import S3Uri, is_s3_uri

if TYPE_CHECKING:
    from smbyoc.s3.transfer import ProgressCallback

__all__ = ["S3Uri", "download", "is_s3_uri", "upload_file"]


def download(uri: str, dest: str | os.PathLike[str], *, endpoint_url: str | None = None,
             progress: ProgressCallback | None = None) -> Path:
    """Download ``uri`` into the folder ``dest`` (created when absent), through the cache.

    An object lands at ``dest/<its name>`` and that file is returned; a prefix's objects land at their keys
    relative to the prefix and ``dest`` is returned. Files are hard links to the cache where possible, else
    copies, each written under a temporary name and renamed.
    """
    from smbyoc.s3.cache import link_or_copy
    from smbyoc.s3.transfer import S3Transfers

    parsed = S3Uri.parse(uri, what="download")
    transfers = S3Transfers(endpoint_url=endpoint_url, progress=progress)
    fetched = transfers.fetch(parsed, what="download")
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [(fetched.name, fetched)] if fetched.is_file() else \
        sorted((p.relative_to(fetched).as_posix(), p) for p in fetched.rglob("*") if p.is_file())
    for relative, source in sources:
        target = folder.joinpath(*relative.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.smbyoc-partial")
        partial.unlink(missing_ok=True)
        link_or_copy(source, partial)
        os.replace(partial, target)
    return folder / fetched.name if fetched.is_file() else folder


def upload_file(path: str | os.PathLike[str], uri: str, *, endpoint_url: str | None = None,
                progress: ProgressCallback | None = None) -> str:
    """Upload the file ``path`` to the object ``uri`` (boto3's managed transfer, multipart when large);
    returns the URI."""
    from smbyoc.errors import ConfigError
    from smbyoc.s3.transfer import S3Transfers

    source = Path(path)
    if not source.is_file():
        raise ConfigError("no such file", key=f"upload {source}")
    parsed = S3Uri.parse(uri, need_key=True, what="upload to")
    return S3Transfers(endpoint_url=endpoint_url, progress=progress).upload_file(source, parsed)
