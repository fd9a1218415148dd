"""The local cache of S3 downloads, under ``$SMBYOC_CACHE_DIR/s3`` (default ``~/.cache/smbyoc/s3``).

Layout::

    objects/<hash of endpoint, bucket, key>/<hash of ETag>/<file name>   one object, as it was at that ETag
    trees/<hash of the listing>/...                 a prefix: its objects at their relative keys (hard links)
    unpacked/<hash of the object's cache path>/...  a code tarball, extracted
    tmp/<pid>-<random>                              work in progress (removed when that process is gone)

An object is looked up by its ETag (from ``HeadObject`` or the listing), so a second run downloads nothing
and a changed object (new ETag) is downloaded again. Everything is written under ``tmp/`` first and renamed
into place, so the cache never holds a half-written file or tree, and runs sharing the cache are safe: the
rename of a file replaces an identical one, a tree that another run finished first is taken as is.
Versions of an object that its newer ETag replaced are removed once they are a few minutes old.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from smbyoc.environment_variables import SMBYOC_CACHE_DIR
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

#: Older versions of an object (a previous ETag) are removed once this many seconds old.
STALE_VERSION_SECONDS = 600.0


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$SMBYOC_CACHE_DIR/s3``, default ``~/.cache/smbyoc/s3``."""
    base = SMBYOC_CACHE_DIR.get(environ)
    return (Path(base) if base else Path.home() / ".cache" / "smbyoc").expanduser() / "s3"


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def link_or_copy(source: Path, destination: Path) -> None:
    """``destination`` (absent) as a hard link to ``source``, or a copy where links are impossible."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


@dataclass(frozen=True)
class S3Cache:
    root: Path

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> S3Cache:
        return cls(cache_root(environ))

    def _fail(self, e: OSError, path: Path) -> ConfigError:
        return ConfigError(f"cannot write the S3 cache: {e.strerror or e} (set SMBYOC_CACHE_DIR to move it)",
                           source=str(path))

    # -- paths -----------------------------------------------------------------------------------

    def object_dir(self, endpoint: str, bucket: str, key: str) -> Path:
        return self.root / "objects" / digest(endpoint, bucket, key)

    def object_path(self, endpoint: str, bucket: str, key: str, etag: str) -> Path:
        name = key.rstrip("/").rpartition("/")[2] or "object"
        return self.object_dir(endpoint, bucket, key) / digest(etag)[:16] / name

    def tree_path(self, *parts: str) -> Path:
        return self.root / "trees" / digest(*parts)

    def unpacked_path(self, archive: Path) -> Path:
        return self.root / "unpacked" / digest(str(archive))

    # -- writing -----------------------------------------------------------------------------------

    def temp_path(self, *, sweep: bool = True) -> Path:
        """A fresh name under ``tmp/`` (nothing created); with ``sweep``, what dead processes left there is
        removed first."""
        tmp = self.root / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._fail(e, tmp) from e
        if sweep:
            self._sweep_tmp(tmp)
        return tmp / f"{os.getpid()}-{secrets.token_hex(6)}"

    def _sweep_tmp(self, tmp: Path) -> None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(tmp):
                pid_text = entry.name.partition("-")[0]
                if pid_text.isdigit() and int(pid_text) != os.getpid() and not _alive(int(pid_text)):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)

    def commit_file(self, tmp: Path, final: Path) -> Path:
        """Rename the finished ``tmp`` (from :meth:`temp_path`) to ``final``; returns ``final``."""
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except OSError as e:
            raise self._fail(e, final) from e
        self._drop_old_versions(final.parent)
        return final

    def store_tree(self, final: Path, build: Callable[[Path], None]) -> Path:
        """Build the directory ``final`` through ``build(temporary directory)`` and a rename; when another run
        finished the same tree first, that one is kept. Returns ``final``."""
        if final.is_dir():
            return final
        tmp = self.temp_path()
        try:
            tmp.mkdir()
            build(tmp)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                    raise
        except OSError as e:
            raise self._fail(e, final) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def link_tree(self, final: Path, files: Iterable[tuple[str, Path]]) -> Path:
        """The tree ``final`` holding each ``(relative path, cached file)`` at its relative path."""
        entries = list(files)

        def build(tmp: Path) -> None:
            for relative, source in entries:
                destination = tmp.joinpath(*relative.split("/"))
                destination.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(source, destination)

        return self.store_tree(final, build)

    def _drop_old_versions(self, version_dir: Path) -> None:
        """Remove the other (older) ETag versions of this object once they are no longer fresh."""
        now = time.time()
        with contextlib.suppress(OSError):
            for entry in os.scandir(version_dir.parent):
                if entry.path == str(version_dir) or not entry.is_dir(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_VERSION_SECONDS:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    log.debug("removed an older version of a cached S3 object: %s", entry.path)
