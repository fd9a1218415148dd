"""Where a job reads from and writes to: local paths, ``file://`` and ``s3://`` URIs.

:class:`Staging` turns each location a user gives into the local path the emulator's engines take, before the
job runs, and uploads the outputs after it finished, so the engines never see S3::

    with Staging(endpoint_url=None, progress=print) as staging:
        job = LocalTrainingJob(
            channels=(("train", staging.input("s3://bucket/data/train/", what="--channel train")),),
            output_dir=staging.output("s3://bucket/jobs", what="--output-dir"))
        result = run_local_training(job)
        staging.publish()                     # model.tar.gz / output.tar.gz to s3://bucket/jobs/<job>/output/
        print(staging.restore_uris(result.describe()))   # the S3 URIs in place of the local stand-ins

Inputs come from the cache (:mod:`smbyoc.s3.cache`); an output location is a temporary folder, uploaded as a
tree by :meth:`Staging.publish` (``<folder>/<job>/output/model.tar.gz`` → ``<S3OutputPath>/<job>/output/
model.tar.gz``, a transform's ``<rel>.out`` → ``<S3OutputPath>/<rel>.out``) and removed when the staging
closes. A checkpoint location is downloaded into a temporary folder and, on publish, new and changed files are
uploaded and the objects of deleted files deleted (once, at the end, not while the job runs).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from smbyoc.errors import ConfigError
from smbyoc.s3.uri import S3Uri, is_s3_uri, scheme_of

if TYPE_CHECKING:
    from smbyoc.s3.cache import S3Cache
    from smbyoc.s3.transfer import ProgressCallback, RemoteObject, S3Transfers

log = logging.getLogger(__name__)

#: A location as a user gives it: a local path, or a ``file://`` or ``s3://`` URI.
Location = str | os.PathLike[str]

Signature = tuple[int, int]  # (size, mtime_ns)


def local_path(location: Location, *, what: str = "") -> Path:
    """A local path or ``file://`` URI as a path (as given: relative stays relative); one ConfigError naming
    ``what`` and the value for any other scheme."""
    text = os.fspath(location)
    scheme = scheme_of(text)
    if scheme is None:
        return Path(text)
    culprit = f"{what} {text}" if what else text
    if scheme != "file":
        raise ConfigError(f"{scheme}:// is not supported; expected a local path, a file:// URI or an s3:// URI",
                          key=culprit)
    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ConfigError("a file:// URI needs an absolute path (file:///path)", key=culprit)
    return Path(urllib.parse.unquote(parts.path))


def check_location(location: Location, *, what: str = "", need_key: bool = False) -> None:
    """Check a location's form without touching anything (bad S3 URIs, unknown schemes)."""
    text = os.fspath(location)
    if is_s3_uri(text):
        S3Uri.parse(text, need_key=need_key, what=what)
    else:
        local_path(text, what=what)


@dataclass
class _Mirror:
    """A checkpoint prefix mirrored in a local folder."""

    uri: S3Uri
    local: Path
    remote: dict[str, RemoteObject]
    at_start: dict[str, Signature] = field(default_factory=dict)


def _signatures(root: Path) -> dict[str, Signature]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


class Staging:
    """Resolves locations to local paths for one job, and publishes its outputs (see the module docstring).

    Nothing touches S3 until the first ``s3://`` location: a job with local paths only needs no boto3 and no
    credentials. ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, read by botocore) names an
    S3-compatible store; ``progress`` gets one line at a time (default: the log).
    """

    def __init__(self, *, endpoint_url: str | None = None, progress: ProgressCallback | None = None,
                 cache: S3Cache | None = None) -> None:
        from smbyoc.s3.transfer import check_endpoint_url

        self.endpoint_url = check_endpoint_url(endpoint_url)
        self.progress = progress
        self.cache = cache
        self._transfers: S3Transfers | None = None
        self._origins: list[tuple[str, str]] = []  # (local path, the location it stands for)
        self._outputs: list[tuple[Path, S3Uri]] = []
        self._mirrors: list[_Mirror] = []
        self._temps: list[Path] = []

    # -- lifetime ------------------------------------------------------------------------------------------

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary output and checkpoint folders (the cache stays)."""
        for temp in reversed(self._temps):
            shutil.rmtree(temp, ignore_errors=True)
        self._temps.clear()

    @property
    def transfers(self) -> S3Transfers:
        if self._transfers is None:
            from smbyoc.s3.transfer import S3Transfers

            self._transfers = S3Transfers(endpoint_url=self.endpoint_url, progress=self.progress, cache=self.cache)
        return self._transfers

    def _remember(self, local: Path, origin: str) -> Path:
        for form in {str(local), str(local.resolve())}:
            self._origins.append((form, origin))
        return local

    def _temp_dir(self, kind: str) -> Path:
        temp = Path(tempfile.mkdtemp(prefix=f"smbyoc-s3-{kind}-"))
        self._temps.append(temp)
        return temp

    # -- inputs --------------------------------------------------------------------------------------------

    def input(self, location: Location, *, what: str, data_type: str = "S3Prefix") -> Path:
        """A channel's or a transform's input: the object's file, the prefix's folder, or (``ManifestFile``) a
        local manifest naming the downloaded objects."""
        text = os.fspath(location)
        if not is_s3_uri(text):
            return local_path(text, what=what)
        uri = S3Uri.parse(text, what=what, need_key=data_type == "ManifestFile")
        if data_type == "ManifestFile":
            return self._remember(self.transfers.fetch_manifest(uri, what=what), text)
        return self._remember(self.transfers.fetch(uri, what=what), text)

    def model(self, location: Location, *, what: str) -> Path:
        """``ModelDataUrl``: the model.tar.gz object's file, or the folder of a prefix (multi-model)."""
        text = os.fspath(location)
        if not is_s3_uri(text):
            return local_path(text, what=what)
        uri = S3Uri.parse(text, what=what)
        return self._remember(self.transfers.fetch(uri, what=what), text)

    def code(self, location: Location, *, what: str) -> Path:
        """``sagemaker_submit_directory``: a ``sourcedir.tar.gz`` object unpacked into a folder, or the folder
        of a prefix (another single object: a folder holding it)."""
        text = os.fspath(location)
        if not is_s3_uri(text):
            return local_path(text, what=what)
        from smbyoc.archives import is_tar_archive, safe_extract

        uri = S3Uri.parse(text, what=what)
        transfers = self.transfers
        is_object, objects = transfers.locate(uri, what=what)
        if not is_object:
            return self._remember(transfers.fetch(uri, what=what), text)
        archive = transfers.fetch_objects(objects, text)[0]
        cache = transfers.cache
        if is_tar_archive(archive):
            def unpack(tmp: Path) -> None:
                safe_extract(archive, tmp)

            folder = cache.store_tree(cache.unpacked_path(archive), unpack)
        else:
            folder = cache.link_tree(cache.tree_path(str(archive), "single"), [(archive.name, archive)])
        return self._remember(folder, text)

    def checkpoints(self, location: Location, *, what: str) -> Path:
        """``CheckpointConfig.S3Uri``: a temporary folder holding the prefix's objects (synced back by
        :meth:`publish`)."""
        text = os.fspath(location)
        if not is_s3_uri(text):
            return local_path(text, what=what)
        uri = S3Uri.parse(text, what=what)
        folder_uri = uri if uri.is_folder else S3Uri(uri.bucket, uri.key + "/")
        transfers = self.transfers
        transfers.check_bucket(folder_uri, what=what)
        local = self._temp_dir("checkpoints")
        objects = transfers.list_prefix(folder_uri)
        remote: dict[str, RemoteObject] = {}
        if objects:
            from smbyoc.s3.transfer import check_layout, relative_key

            relatives = [relative_key(o.key, folder_uri.key, o.bucket) for o in objects]
            check_layout(relatives, f"{what} {uri}")
            for relative, obj, cached in zip(relatives, objects, transfers.fetch_objects(objects, str(folder_uri)),
                                             strict=True):
                destination = local.joinpath(*relative.split("/"))
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cached, destination)
                remote[relative] = obj
        else:
            transfers.progress(f"{folder_uri}: no checkpoints yet")
        self._mirrors.append(_Mirror(folder_uri, local, remote, _signatures(local)))
        return self._remember(local, text)

    # -- outputs -------------------------------------------------------------------------------------------

    def output(self, location: Location, *, what: str) -> Path:
        """An output location: local as given, or for ``s3://`` a temporary folder uploaded by :meth:`publish`
        (the bucket is checked now, so a missing one is said before the job runs)."""
        text = os.fspath(location)
        if not is_s3_uri(text):
            return local_path(text, what=what)
        uri = S3Uri.parse(text, what=what)
        self.transfers.check_bucket(uri, what=what)
        local = self._temp_dir("output")
        self._outputs.append((local, uri))
        return self._remember(local, text)

    def publish(self) -> list[str]:
        """Upload every output folder's files and sync the checkpoint folders; returns the URIs written."""
        written: list[str] = []
        for local, uri in self._outputs:
            written += self.transfers.upload_tree(local, uri)
        for mirror in self._mirrors:
            written += self._sync_back(mirror)
        return written

    def _sync_back(self, mirror: _Mirror) -> list[str]:
        now = _signatures(mirror.local)
        changed = [rel for rel, sig in sorted(now.items()) if mirror.at_start.get(rel) != sig]
        gone = [rel for rel in sorted(mirror.remote) if rel not in now]
        transfers = self.transfers
        written = transfers.upload_files([(mirror.local / rel, mirror.uri.child(rel)) for rel in changed],
                                         str(mirror.uri))
        if gone:
            transfers.delete([mirror.uri.child(rel) for rel in gone])
            transfers.progress(f"{mirror.uri}: deleted {len(gone)} checkpoint(s) deleted during the job")
        return written

    # -- reporting -----------------------------------------------------------------------------------------

    def uri_of(self, path: Location) -> str:
        """The location a local stand-in (or a file under it) stands for; the path itself otherwise."""
        return str(self.restore_uris(os.fspath(path)))

    def restore_uris(self, data: Any) -> Any:
        """``data`` (a describe-shaped dict, a list, a string) with every local stand-in path, as a path or as a
        ``file://`` URI, replaced by the location it stands for."""
        if isinstance(data, dict):
            return {key: self.restore_uris(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [self.restore_uris(value) for value in data]
        if not isinstance(data, str) or not self._origins:
            return data
        for local, origin in sorted(self._origins, key=lambda pair: -len(pair[0])):
            for form in (local, Path(local).as_uri()):
                if data == form:
                    return origin
                if data.startswith(form + "/"):
                    return origin.rstrip("/") + data[len(form):]
        return data
