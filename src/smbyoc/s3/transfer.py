"""Downloads and uploads through boto3's managed transfer, with progress lines and the ETag cache.

:class:`S3Transfers` holds one S3 client (made by :func:`smbyoc.aws.client.client`, so the credential chain is
checked before the first request and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are honoured when no
``endpoint_url`` is given), one :class:`~smbyoc.s3.cache.S3Cache` and one progress callback, which gets
human lines (``s3://b/k: downloaded 1.2 MiB in 0.3 s``, ``s3://b/k: cached (1.2 MiB)``).

What a URI stands for follows SageMaker and SDK local mode: a key that names an object is that object;
otherwise (or when the key ends in ``/``) every object whose key starts with it, each at its key relative to
the prefix (``prefix/a/b.csv`` → ``a/b.csv``), folder markers (keys ending in ``/``) skipped. A manifest is a
JSON array ``[{"prefix": "s3://b/p/"}, "rel/key", ...]``: each object is ``prefix + key`` and lands at ``key``.

Every boto3 call runs inside :func:`smbyoc.aws.client.translate_aws_errors`: a failure is one ``AwsError``
line naming the action and the URI. The size and ETag from the listing are handed to the transfer, which then
skips its own ``HeadObject`` and sends ``If-Match``: what lands in the cache is the version the ETag names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbyoc.aws.client import client as aws_client
from smbyoc.aws.client import error_code, translate, translate_aws_errors
from smbyoc.errors import ConfigError
from smbyoc.s3.cache import S3Cache, link_or_copy
from smbyoc.s3.uri import S3Uri

log = logging.getLogger(__name__)

#: Gets one human line at a time (the CLI prints them on stderr).
ProgressCallback = Callable[[str], None]

#: Seconds between two progress lines of one transfer.
PROGRESS_INTERVAL = 2.0
#: Up to this many files, an upload reports each one.
LIST_EACH_FILE_UP_TO = 20
#: Threads for HeadObject calls (manifests) and for each transfer manager.
WORKERS = 8


def human_size(size: float) -> str:
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def check_endpoint_url(url: str | None) -> str | None:
    """``url`` if it is an ``http(s)://host[:port]`` URL; one ConfigError naming it otherwise."""
    if url is None or url == "":
        return None
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError("the port is not a number from 0 to 65535", key=f"--endpoint-url {url}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("expected an http:// or https:// URL of an S3 API (https://s3.example.com:9000)",
                          key=f"--endpoint-url {url}")
    return url


@dataclass(frozen=True)
class RemoteObject:
    bucket: str
    key: str
    #: As S3 sends it, quotes included (what ``If-Match`` takes).
    etag: str
    size: int

    @property
    def uri(self) -> S3Uri:
        return S3Uri(self.bucket, self.key)


def relative_key(key: str, prefix: str, where: str) -> str:
    """Where the object ``key`` found under ``prefix`` lands: its key after the prefix (leading ``/``
    dropped). A key that cannot be a relative path (``..``, ``.``, empty parts) is refused."""
    relative = key[len(prefix):].lstrip("/")
    check_relative(relative, f"object s3://{where}/{key}")
    return relative


def check_relative(relative: str, culprit: str) -> None:
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts):
        raise ConfigError("this key cannot be a local path (it has an empty, '.' or '..' part)", key=culprit)


def check_layout(relatives: Sequence[str], where: str) -> None:
    """No relative path is both a file and a folder (``a`` and ``a/b``), none is given twice."""
    files = set()
    for relative in relatives:
        if relative in files:
            raise ConfigError(f"{relative!r} is named twice", key=where)
        files.add(relative)
    for relative in relatives:
        parts = relative.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in files:
                raise ConfigError(f"{folder!r} is an object and also the folder of {relative!r}; "
                                  "they cannot both be local paths", key=where)


class _Meter:
    """Counts the bytes of one transfer (boto3 reports from its worker threads) and says how far it got,
    at most every :data:`PROGRESS_INTERVAL` seconds, then once when done."""

    def __init__(self, label: str, total: int, emit: ProgressCallback, verb: str) -> None:
        self.label = label
        self.total = total
        self.emit = emit
        self.verb = verb
        self.done = 0
        self.started = time.monotonic()
        self.last = self.started
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            now = time.monotonic()
            if now - self.last < PROGRESS_INTERVAL or self.done >= self.total:
                return
            self.last = now
            done = self.done
        percent = 100 * done // max(1, self.total)
        self.emit(f"{self.label}: {percent}% of {human_size(self.total)}")

    def finish(self) -> float:
        seconds = time.monotonic() - self.started
        rate = f", {human_size(self.total / seconds)}/s" if seconds > 0.05 and self.total else ""
        self.emit(f"{self.label}: {self.verb} {human_size(self.total)} in {seconds:.1f} s{rate}")
        return seconds


def _subscriber(size: int | None, etag: str | None, meter: _Meter) -> Any:
    from s3transfer.subscribers import BaseSubscriber  # type: ignore[import-untyped]

    class Subscriber(BaseSubscriber):  # type: ignore[misc]
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            if size is not None:
                future.meta.provide_transfer_size(size)
            if etag is not None:
                future.meta.provide_object_etag(etag)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            meter.add(bytes_transferred)

    return Subscriber()


@contextlib.contextmanager
def _transfer_errors(action: str) -> Iterator[None]:
    """What a managed transfer raises, as one line: botocore's errors and boto3's and s3transfer's own
    (retries exhausted, failed uploads); an object that changed under a download; a local file system error."""
    import boto3.exceptions
    import s3transfer.exceptions  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        if error_code(e) in ("PreconditionFailed", "412"):
            raise ConfigError("the object changed while it was being downloaded; run again", key=action) from e
        raise translate(e, action) from e
    except (BotoCoreError, boto3.exceptions.Boto3Error, s3transfer.exceptions.RetriesExceededError,
            s3transfer.exceptions.S3UploadFailedError, s3transfer.exceptions.S3DownloadFailedError) as e:
        raise translate(e, action) from e
    except OSError as e:
        raise ConfigError(f"{e.strerror or e}", key=f"{action}: {e.filename or 'local file'}") from e


class S3Transfers:
    """Downloads into the cache and uploads, for one endpoint, with one progress callback."""

    def __init__(self, *, endpoint_url: str | None = None, progress: ProgressCallback | None = None,
                 cache: S3Cache | None = None) -> None:
        self.endpoint_url = check_endpoint_url(endpoint_url)
        self.progress: ProgressCallback = progress or (lambda line: log.info("%s", line))
        self.cache = cache or S3Cache.default()
        self._client: Any = None

    # -- the client ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The S3 client, made on first use (which checks the credential chain: one line when empty)."""
        if self._client is None:
            self._client = aws_client("s3", endpoint_url=self.endpoint_url)
        return self._client

    @property
    def endpoint(self) -> str:
        """Who serves the objects, for the cache key: ``aws`` for Amazon S3, else the endpoint URL."""
        url = str(self.client.meta.endpoint_url)
        host = urllib.parse.urlsplit(url).hostname or ""
        return "aws" if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) else url.rstrip("/")

    @contextlib.contextmanager
    def _manager(self) -> Iterator[Any]:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(max_concurrency=WORKERS, preferred_transfer_client="classic")
        with create_transfer_manager(self.client, config) as manager:
            yield manager

    # -- finding objects ----------------------------------------------------------------------------

    def head(self, uri: S3Uri) -> RemoteObject | None:
        """The object ``uri`` names, or None when there is none."""
        from botocore.exceptions import ClientError

        client = self.client
        with translate_aws_errors(f"look up {uri}"):
            try:
                response = client.head_object(Bucket=uri.bucket, Key=uri.key)
            except ClientError as e:
                if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return RemoteObject(uri.bucket, uri.key, str(response.get("ETag", "")), int(response["ContentLength"]))

    def check_bucket(self, uri: S3Uri, *, what: str) -> None:
        """The bucket of ``uri`` exists and answers (said before a job runs rather than after)."""
        from botocore.exceptions import ClientError

        client = self.client
        with translate_aws_errors(f"check s3://{uri.bucket}"):
            try:
                client.head_bucket(Bucket=uri.bucket)
            except ClientError as e:
                if error_code(e) in ("404", "NoSuchBucket", "NotFound"):
                    raise ConfigError(f"no such bucket {uri.bucket!r}", key=f"{what} {uri}") from e
                raise

    def list_prefix(self, uri: S3Uri) -> list[RemoteObject]:
        """Every object whose key starts with ``uri``'s key (folder markers left out), sorted by key."""
        client = self.client
        found: list[RemoteObject] = []
        with translate_aws_errors(f"list {uri}"):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.key):
                for item in page.get("Contents", ()):
                    key = str(item["Key"])
                    if not key.endswith("/"):
                        found.append(RemoteObject(uri.bucket, key, str(item.get("ETag", "")), int(item["Size"])))
        return sorted(found, key=lambda o: o.key)

    def locate(self, uri: S3Uri, *, what: str) -> tuple[bool, list[RemoteObject]]:
        """``(True, [object])`` when ``uri`` names an object, else ``(False, objects under the prefix)``;
        one ConfigError naming ``what`` when there is neither."""
        if not uri.is_folder:
            obj = self.head(uri)
            if obj is not None:
                return True, [obj]
        objects = self.list_prefix(uri)
        if not objects:
            raise ConfigError("no such object, and no objects under this prefix", key=f"{what} {uri}")
        return False, objects

    # -- downloading ----------------------------------------------------------------------------------

    def cached_path(self, obj: RemoteObject) -> Path:
        return self.cache.object_path(self.endpoint, obj.bucket, obj.key, obj.etag.strip('"'))

    def fetch_objects(self, objects: Sequence[RemoteObject], label: str) -> list[Path]:
        """The cached file of each object, downloading those not cached at their ETag; progress under ``label``."""
        paths = [self.cached_path(o) for o in objects]
        missing = [(o, p) for o, p in zip(objects, paths, strict=True) if not p.is_file()]
        total = sum(o.size for o in objects)
        cached = len(objects) - len(missing)
        if not missing:
            what = "" if len(objects) == 1 else f"{len(objects)} objects, "
            self.progress(f"{label}: cached ({what}{human_size(total)})")
            return paths
        size = sum(o.size for o, _ in missing)
        if len(objects) > 1:
            self.progress(f"{label}: {len(objects)} objects, {human_size(total)}"
                          + (f" ({cached} cached)" if cached else ""))
        meter = _Meter(label, size, self.progress, "downloaded")
        temps = [self.cache.temp_path(sweep=i == 0) for i in range(len(missing))]
        try:
            with _transfer_errors(f"download {label}"), self._manager() as manager:
                futures = [
                    manager.download(o.bucket, o.key, str(tmp),
                                     subscribers=[_subscriber(o.size, o.etag or None, meter)])
                    for (o, _), tmp in zip(missing, temps, strict=True)
                ]
                for future in futures:
                    future.result()
            for (obj, final), tmp in zip(missing, temps, strict=True):
                got = tmp.stat().st_size
                if got != obj.size:
                    raise ConfigError(f"got {got} bytes where the listing said {obj.size}; run again",
                                      key=str(obj.uri))
                self.cache.commit_file(tmp, final)
        finally:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        meter.finish()
        return paths

    def fetch(self, uri: S3Uri, *, what: str) -> Path:
        """The local stand-in for ``uri``: the cached file of the object it names, else a cached tree holding
        every object under the prefix at its relative key."""
        is_object, objects = self.locate(uri, what=what)
        if is_object:
            return self.fetch_objects(objects, str(uri))[0]
        relatives = [relative_key(o.key, uri.key, o.bucket) for o in objects]
        check_layout(relatives, f"{what} {uri}")
        files = self.fetch_objects(objects, str(uri))
        tree = self.cache.tree_path(self.endpoint, "prefix", str(uri),
                                    *(f"{r}\0{o.etag}" for r, o in zip(relatives, objects, strict=True)))
        return self.cache.link_tree(tree, zip(relatives, files, strict=True))

    def fetch_object(self, uri: S3Uri, *, what: str) -> Path:
        """The cached file of the object ``uri`` names; one ConfigError when there is none."""
        obj = self.head(uri)
        if obj is None:
            raise ConfigError("no such object", key=f"{what} {uri}")
        return self.fetch_objects([obj], str(uri))[0]

    def fetch_manifest(self, uri: S3Uri, *, what: str) -> Path:
        """A local manifest (``[{"prefix": "<local folder>/"}, "key", ...]``) standing for the manifest object
        ``uri``, with every object it names downloaded into that folder at its key."""
        manifest = self.fetch_object(uri, what=what)
        culprit = f"{what} {uri}"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"not a JSON manifest: {e}", key=culprit) from e
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) \
                or not isinstance(data[0].get("prefix"), str):
            raise ConfigError('expected a JSON array starting with {"prefix": "s3://..."}', key=culprit)
        prefix_text: str = data[0]["prefix"]
        prefix = S3Uri.parse(prefix_text, what=f"{culprit}: prefix")
        keys: list[str] = []
        for index, key in enumerate(data[1:], start=1):
            if not isinstance(key, str):
                raise ConfigError(f"entry {index} {key!r}: expected a key (a string)", key=culprit)
            check_relative(key, f"{culprit}: entry {index} {key!r}")
            keys.append(key)
        if not keys:
            raise ConfigError("the manifest names no objects", key=culprit)
        check_layout(keys, culprit)
        targets = [S3Uri.parse(f"s3://{prefix.bucket}/{prefix.key}{key}", what=f"{culprit}: entry") for key in keys]
        self.client  # noqa: B018 - the credential check happens here, not in every worker
        with ThreadPoolExecutor(WORKERS) as pool:
            found = list(pool.map(self.head, targets))
        for index, (target, obj) in enumerate(zip(targets, found, strict=True), start=1):
            if obj is None:
                raise ConfigError(f"entry {index}: no such object {target}", key=culprit)
        objects = [o for o in found if o is not None]
        files = self.fetch_objects(objects, f"{uri} (its objects)")
        listing = (f"{k}\0{o.bucket}\0{o.key}\0{o.etag}" for k, o in zip(keys, objects, strict=True))
        tree = self.cache.tree_path(self.endpoint, "manifest", str(uri), manifest.parent.name, *listing)

        def build(tmp: Path) -> None:
            for key, source in zip(keys, files, strict=True):
                destination = tmp.joinpath("data", *key.split("/"))
                destination.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(source, destination)
            # The final folder's path is known: the manifest points there once the rename is done.
            local = [{"prefix": str(tree / "data") + "/"}, *keys]
            (tmp / "manifest.json").write_text(json.dumps(local, indent=1), encoding="utf-8")

        return self.cache.store_tree(tree, build) / "manifest.json"

    # -- uploading ----------------------------------------------------------------------------------------

    def upload_files(self, pairs: Sequence[tuple[Path, S3Uri]], label: str) -> list[str]:
        """Upload each ``(local file, object URI)``; returns the URIs."""
        if not pairs:
            return []
        sizes = [path.stat().st_size for path, _ in pairs]
        meter = _Meter(label, sum(sizes), self.progress, "uploaded")
        if len(pairs) > 1:
            self.progress(f"{label}: uploading {len(pairs)} files, {human_size(sum(sizes))}")
        with _transfer_errors(f"upload to {label}"), self._manager() as manager:
            futures = [manager.upload(str(path), uri.bucket, uri.key, subscribers=[_subscriber(size, None, meter)])
                       for (path, uri), size in zip(pairs, sizes, strict=True)]
            for future in futures:
                future.result()
        meter.finish()
        if len(pairs) <= LIST_EACH_FILE_UP_TO and [str(uri) for _, uri in pairs] != [label]:
            for (_, uri), size in zip(pairs, sizes, strict=True):
                self.progress(f"  {uri} ({human_size(size)})")
        return [str(uri) for _, uri in pairs]

    def upload_file(self, path: Path, uri: S3Uri) -> str:
        if uri.is_folder:
            raise ConfigError("names a folder (it ends in '/'); expected an object key", key=str(uri))
        return self.upload_files([(path, uri)], str(uri))[0]

    def upload_tree(self, root: Path, uri: S3Uri) -> list[str]:
        """Every file under ``root`` to ``uri``'s prefix at its relative path (links are not followed)."""
        files = sorted((p for p in root.rglob("*") if p.is_file() and not p.is_symlink()),
                       key=lambda p: p.relative_to(root).as_posix())
        return self.upload_files([(p, uri.child(p.relative_to(root).as_posix())) for p in files], str(uri))

    def delete(self, uris: Sequence[S3Uri]) -> None:
        client = self.client
        for uri in uris:
            with translate_aws_errors(f"delete {uri}"):
                client.delete_object(Bucket=uri.bucket, Key=uri.key)

    # -- payloads: one object's bytes, in one request, never cached -------------------------------------------

    def read_bytes(self, uri: S3Uri, *, what: str, limit: int | None = None) -> bytes:
        """The content of the object ``uri`` (a payload read once, so not through the cache). Its size comes from
        ``HeadObject`` and is checked against ``limit`` before anything is read; ``GetObject`` then asks for that
        version (``If-Match``). One ConfigError naming ``what`` when there is no such object, it is too large or
        it changed meanwhile; AwsError for what S3 refuses."""
        from botocore.exceptions import ClientError

        culprit = f"{what} {uri}"
        obj = self.head(uri)
        if obj is None:
            raise ConfigError("no such object", key=culprit)
        if limit is not None and obj.size > limit:
            raise ConfigError(f"the object has {obj.size:,} bytes; the limit is {limit:,}", key=culprit)
        client = self.client
        condition = {"IfMatch": obj.etag} if obj.etag else {}
        with translate_aws_errors(f"read {uri}"):
            try:
                data: bytes = client.get_object(Bucket=uri.bucket, Key=uri.key, **condition)["Body"].read()
            except ClientError as e:
                if error_code(e) in ("PreconditionFailed", "412"):
                    raise ConfigError("the object changed while it was being read", key=culprit) from e
                if error_code(e) in ("NoSuchKey", "404"):
                    raise ConfigError("no such object (it was deleted while it was being read)", key=culprit) from e
                raise
        if len(data) != obj.size:
            raise ConfigError(f"got {len(data):,} bytes where HeadObject said {obj.size:,}", key=culprit)
        return data

    def put_bytes(self, uri: S3Uri, data: bytes, *, content_type: str | None = None) -> str:
        """Write ``data`` as the object ``uri`` with one ``PutObject`` (readers see the whole object or the one it
        replaced, never a part); returns the URI."""
        if uri.is_folder:
            raise ConfigError("names a folder (it ends in '/'); expected an object key", key=str(uri))
        client = self.client
        extra = {"ContentType": content_type} if content_type else {}
        with translate_aws_errors(f"upload {uri}"):
            client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data, **extra)
        return str(uri)
