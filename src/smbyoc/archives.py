"""Safe extraction and atomic creation of ``.tar.gz`` archives (model.tar.gz, sourcedir.tar.gz).

Extraction rejects absolute member names, ``..`` components, links that point outside the target
directory and device files, before anything is written. Creation writes to a temporary name in the
destination directory and renames, so a crash never leaves a half-written archive.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tarfile
import tempfile
from pathlib import Path

from smbyoc.errors import ArchiveError

log = logging.getLogger(__name__)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    culprit = f"{archive}: member {name!r}"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{culprit} has an absolute path")
    normalized = posixpath.normpath(name)
    if normalized == ".." or normalized.startswith("../") or "/../" in f"/{name}/":
        raise ArchiveError(f"{culprit} leaves the target directory ('..')")
    if member.isdev():
        raise ArchiveError(f"{culprit} is a device or FIFO")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            raise ArchiveError(f"{culprit} is a link to the absolute path {target!r}")
        base = posixpath.dirname(normalized) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(f"{culprit} is a link to {target!r}, outside the target directory")


def safe_extract(archive: str | Path, destination: str | Path) -> list[str]:
    """Extract ``archive`` into ``destination`` after checking every member; returns the member names."""
    archive = Path(archive)
    destination = Path(destination)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            destination.mkdir(parents=True, exist_ok=True)
            # The members are checked above; the "data" filter (Python >= 3.12, backported to
            # 3.10.12/3.11.4) checks again where it is available.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, members=members, filter="data")
            else:  # pragma: no cover - old Python patch releases
                tar.extractall(destination, members=members)
            return [m.name for m in members]
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"{archive}: cannot read archive: {e}") from e


def is_tar_archive(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and tarfile.is_tarfile(p)


def create_tar_gz(source_dir: str | Path, archive: str | Path, *, compress: bool = True) -> Path:
    """Pack the entries of ``source_dir`` at the archive root (as SageMaker and the SDK do).

    Symlinks are dereferenced (SDK ``create_tar_file`` uses ``dereference=True``). The archive is
    written to a temporary file beside ``archive`` and renamed into place.
    """
    source = Path(source_dir)
    target = Path(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        mode = "w:gz" if compress else "w"
        with tarfile.open(tmp, mode, dereference=True) as tar:  # type: ignore[call-overload]
            if source.is_dir():
                for entry in sorted(source.iterdir()):
                    tar.add(entry, arcname=entry.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s from %s", target, source)
    return target
