"""Safe extraction of ``.tar.gz`` archives (model.tar.gz, sourcedir.tar.gz).

Extraction never calls ``tarfile.extractall`` and never relies on the interpreter's ``data`` filter, so
the Python patch level does not matter (3.11.2 has no filter; the filter of 3.11.7 is fooled by the
CVE-2025-4517 "realpath overflow"). Every member is checked before anything is written:

* absolute names, ``..`` components, devices, FIFOs, sparse and unknown member types are refused;
* no member may live under a path that is a symlink member (wherever that link appears in the archive);
* a symlink target must be relative, stay inside the tree lexically, and not pass through another symlink
  member (its last component may be one: each link of a chain is checked on its own);
* a hard link must name an earlier regular file member;
* limits: at most ``SMBYOC_ARCHIVE_MAX_MEMBERS`` members (default 100,000) and at most
  ``SMBYOC_ARCHIVE_MAX_BYTES`` bytes (default 100 GiB), the declared sizes summed before writing and the
  bytes really written counted while streaming; the declared total must also fit in the free disk space.

Members are then written by walking directory file descriptors opened with ``O_NOFOLLOW`` (so nothing is
ever written through a link), files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, and each parent
directory's real path (``/proc/self/fd``, else ``os.path.realpath``) is checked against the root. Owners
are ignored; modes lose setuid/setgid/sticky and group/other write. Everything is extracted into a
temporary directory first and moved into place only when the whole archive succeeded, so a refused
archive leaves the destination as it was. The destination's existing content is trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from smbyoc.environment_variables import SMBYOC_ARCHIVE_MAX_BYTES, SMBYOC_ARCHIVE_MAX_MEMBERS
from smbyoc.errors import ArchiveError

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit

Parts = tuple[str, ...]


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int
    max_members: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExtractLimits:
        return cls(SMBYOC_ARCHIVE_MAX_BYTES.get(environ), SMBYOC_ARCHIVE_MAX_MEMBERS.get(environ))


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def lexical_target(parent: Parts, linkname: str, is_link: frozenset[Parts] | None) -> Parts | None:
    """Where ``linkname`` (relative to ``parent``) points, or None if it leaves the tree or (when
    ``is_link`` is given) passes through one of those links before its last component."""
    if not linkname or linkname.startswith("/"):
        return None
    stack = list(parent)
    components = [c for c in linkname.split("/") if c not in ("", ".")]
    for index, component in enumerate(components):
        if component == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(component)
        if is_link is not None and index < len(components) - 1 and tuple(stack) in is_link:
            return None
    return tuple(stack)


# ------------------------------------------------------------------------------------------ extraction

def _parts(name: str, culprit: str) -> Parts:
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{culprit} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{culprit} leaves the target directory ('..')")
    return parts


def _kind(member: tarfile.TarInfo, culprit: str) -> str:
    if member.issparse():
        raise ArchiveError(f"{culprit} is a sparse file (not supported)")
    if member.isdev():
        raise ArchiveError(f"{culprit} is a device or FIFO")
    for kind, test in (("dir", member.isdir), ("sym", member.issym), ("hard", member.islnk)):
        if test():
            return kind
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        return "file"
    raise ArchiveError(f"{culprit} has the unsupported member type {member.type!r}")


def _plan(tar: tarfile.TarFile, archive: Path, limits: ExtractLimits) -> list[tuple[tarfile.TarInfo, Parts, str]]:
    """Read and check every member header; nothing is written here."""
    entries: list[tuple[tarfile.TarInfo, Parts, str]] = []
    declared = 0
    while (member := tar.next()) is not None:
        if len(entries) >= limits.max_members:
            raise ArchiveError(f"{archive}: more than {limits.max_members} members, the limit set by "
                               f"{SMBYOC_ARCHIVE_MAX_MEMBERS.name}")
        culprit = f"{archive}: member {member.name!r}"
        kind = _kind(member, culprit)
        if kind == "file":
            declared += member.size
            if declared > limits.max_bytes:
                raise ArchiveError(f"{archive}: members declare more than {_human(limits.max_bytes)}, the limit "
                                   f"set by {SMBYOC_ARCHIVE_MAX_BYTES.name}")
        entries.append((member, _parts(member.name, culprit), kind))
    links = frozenset(parts for _, parts, kind in entries if kind == "sym")
    seen: dict[Parts, str] = {}
    for member, parts, kind in entries:
        culprit = f"{archive}: member {member.name!r}"
        if not parts:
            if kind == "dir":
                continue
            raise ArchiveError(f"{culprit} names the target directory itself")
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix in links:
                raise ArchiveError(f"{culprit} goes through the link {'/'.join(prefix)!r}")
            if seen.setdefault(prefix, "dir") != "dir":
                raise ArchiveError(f"{culprit} is under {'/'.join(prefix)!r}, which is not a directory")
        previous = seen.get(parts)
        if previous is not None and not (previous == kind and kind in ("dir", "file")):
            raise ArchiveError(f"{culprit} appears twice, once as another kind of member")
        if kind == "sym":
            if not member.linkname:
                raise ArchiveError(f"{culprit} is a link with an empty target")
            if member.linkname.startswith("/"):
                raise ArchiveError(f"{culprit} is a link to the absolute path {member.linkname!r}")
            if lexical_target(parts[:-1], member.linkname, None) is None:
                raise ArchiveError(f"{culprit} is a link to {member.linkname!r}, outside the target directory")
            if lexical_target(parts[:-1], member.linkname, links) is None:
                raise ArchiveError(f"{culprit} is a link to {member.linkname!r}, which goes through another link")
        elif kind == "hard":
            target = lexical_target((), member.linkname, None)
            if target is None:
                raise ArchiveError(f"{culprit} is a link to {member.linkname!r}, outside the target directory")
            if seen.get(target) not in ("file", "hard"):
                raise ArchiveError(f"{culprit} is a hard link to {member.linkname!r}, not an earlier file member")
        seen[parts] = kind
    return entries


class _Writer:
    """Writes members under ``root`` through directory descriptors opened with ``O_NOFOLLOW``."""

    _CACHE = 64  # open directory descriptors kept between members

    def __init__(self, tar: tarfile.TarFile, root: str, archive: Path, limits: ExtractLimits) -> None:
        self.tar, self.root, self.archive, self.limits = tar, root, archive, limits
        self.root_real = os.path.realpath(root)
        self.root_fd = os.open(root, DIR_FLAGS)
        self.dirs: dict[Parts, int] = {}
        self.files: set[Parts] = set()
        self.written = 0

    def close(self) -> None:
        for fd in [*self.dirs.values(), self.root_fd]:
            os.close(fd)
        self.dirs.clear()

    def directory(self, parts: Parts, culprit: str, *, create: bool = True) -> int:
        """A descriptor of ``root/parts`` (cached; do not close), whose real path is checked."""
        fd = self.dirs.get(parts)
        if fd is not None:
            return fd
        parent = self.directory(parts[:-1], culprit, create=create) if parts else self.root_fd
        if not parts:
            return parent
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
        fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = os.path.realpath(os.path.join(self.root, *parts))
        if real != self.root_real and not real.startswith(self.root_real + os.sep):
            os.close(fd)
            raise ArchiveError(f"{culprit} would be written to {real}, outside the target directory")
        self.dirs[parts] = fd
        return fd

    def write(self, member: tarfile.TarInfo, parts: Parts, kind: str) -> None:
        culprit = f"{self.archive}: member {member.name!r}"
        if len(self.dirs) > self._CACHE:  # only between members: descriptors in use stay open
            for fd in self.dirs.values():
                os.close(fd)
            self.dirs.clear()
        try:
            if kind == "dir":
                os.fchmod(self.directory(parts, culprit), (member.mode & 0o755) | 0o700)
                return
            parent, name = self.directory(parts[:-1], culprit), parts[-1]
            if kind == "sym":
                os.symlink(member.linkname, name, dir_fd=parent)
            elif kind == "hard":
                target = lexical_target((), member.linkname, None) or ()
                source = self.directory(target[:-1], culprit, create=False)
                os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            else:
                self.write_file(member, parent, name, parts, culprit)
        except OSError as e:
            raise ArchiveError(f"{culprit} cannot be extracted: {e.strerror or e}") from e

    def write_file(self, member: tarfile.TarInfo, parent: int, name: str, parts: Parts, culprit: str) -> None:
        if parts in self.files:  # a later copy of a file replaces the earlier one, as tar does
            os.unlink(name, dir_fd=parent)
        self.files.add(parts)
        source = self.tar.extractfile(member)
        if source is None:  # pragma: no cover - only regular members reach here
            raise ArchiveError(f"{culprit} has no data")
        with source, os.fdopen(os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent), "wb") as out:
            while chunk := source.read(_CHUNK):
                self.written += len(chunk)
                if self.written > self.limits.max_bytes:
                    raise ArchiveError(f"{culprit} takes the archive past {_human(self.limits.max_bytes)}, "
                                       f"the limit set by {SMBYOC_ARCHIVE_MAX_BYTES.name}")
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), _file_mode(member.mode))
            os.utime(out.fileno(), (member.mtime, member.mtime))


def _file_mode(mode: int) -> int:
    mode = (mode & 0o755) | 0o600
    return mode if mode & 0o100 else mode & ~0o111


def _write_all(tar: tarfile.TarFile, entries: list[tuple[tarfile.TarInfo, Parts, str]], root: str,
               archive: Path, limits: ExtractLimits) -> None:
    writer = _Writer(tar, root, archive, limits)
    try:
        for member, parts, kind in entries:
            if parts:
                writer.write(member, parts, kind)
        for member, parts, kind in reversed(entries):
            if parts and kind == "dir":
                os.utime(writer.directory(parts, "", create=False), (member.mtime, member.mtime))
    finally:
        writer.close()


def _move_into(staging: Path, destination: Path, archive: Path) -> None:
    """Move the extracted entries into an existing ``destination``; existing links are replaced, not followed."""
    def conflicts(src: Path, dst: Path) -> Iterator[str]:
        for entry in os.scandir(src):
            target = dst / entry.name
            if not os.path.lexists(target):
                continue
            existing_dir = target.is_dir() and not target.is_symlink()
            if entry.is_dir(follow_symlinks=False) and existing_dir:
                yield from conflicts(Path(entry.path), target)
            elif existing_dir:
                yield str(target)

    clash = next(conflicts(staging, destination), None)
    if clash is not None:
        raise ArchiveError(f"{archive}: cannot replace the directory {clash} with a file")

    def move(src: Path, dst: Path) -> None:
        for entry in list(os.scandir(src)):
            target = dst / entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and target.is_dir() and not target.is_symlink():
                move(Path(entry.path), target)
                continue
            if is_dir and os.path.lexists(target):
                target.unlink()
            os.replace(entry.path, target)

    move(staging, destination)


def safe_extract(archive: str | Path, destination: str | Path, *, limits: ExtractLimits | None = None,
                 environ: Mapping[str, str] | None = None) -> list[str]:
    """Extract ``archive`` into ``destination`` after checking every member; returns the member names.

    ``limits`` default to ``SMBYOC_ARCHIVE_MAX_BYTES`` / ``SMBYOC_ARCHIVE_MAX_MEMBERS`` read from
    ``environ`` (default ``os.environ``). Raises :class:`ArchiveError` naming the archive (and the member).
    """
    archive = Path(archive)
    destination = Path(destination)
    limits = limits or ExtractLimits.from_env(environ)
    if destination.is_symlink():  # the caller chose it: use where it points
        destination = Path(os.path.realpath(destination))
    if os.path.lexists(destination) and not destination.is_dir():
        raise ArchiveError(f"{archive}: cannot extract into {destination}: not a directory")
    try:
        with tarfile.open(archive, "r:*") as tar:
            entries = _plan(tar, archive, limits)
            exists = destination.is_dir()
            base = destination if exists else destination.parent
            base.mkdir(parents=True, exist_ok=True)
            declared = sum(m.size for m, _, kind in entries if kind == "file")
            free = shutil.disk_usage(base).free
            if declared > free:
                raise ArchiveError(f"{archive}: members declare {_human(declared)} but only {_human(free)} "
                                   f"are free in {base}")
            try:
                staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.extract-", dir=base))
            except OSError as e:
                raise ArchiveError(f"{archive}: cannot extract into {destination}: {e.strerror or e}") from e
            try:
                _write_all(tar, entries, str(staging), archive, limits)
                if exists:
                    _move_into(staging, destination, archive)
                else:
                    os.chmod(staging, 0o755)  # noqa: S103 - a model directory others may read
                    os.rename(staging, destination)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return [m.name for m, _, _ in entries]
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ArchiveError(f"{archive}: cannot read archive: {e}") from e


def is_tar_archive(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and tarfile.is_tarfile(p)
