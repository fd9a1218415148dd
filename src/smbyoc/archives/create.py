"""Creation of ``.tar.gz`` archives from a tree (model.tar.gz, output.tar.gz).

Links are packed as links when they stay inside the tree and left out (with one warning) when they leave
it, so a link left by a training image is never followed on the host with the CLI's rights. The archive is
written to a temporary name beside the target and renamed, so a crash never leaves a half-written archive.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smbyoc.archives.extract import DIR_FLAGS, MAX_LINK_HOPS, Parts, lexical_target

log = logging.getLogger(__name__)

def contained_link_target(root: Path, link: Parts, linkname: str) -> str | None:
    """The target to store for the link ``root/link`` (-> ``linkname``), or None when it leaves the tree.

    The chain is resolved by hand (``lstat``/``readlink``, never ``realpath``, whose errors would be
    mistaken for "not a link"); if it leaves the tree, loops or cannot be read, the link is left out. A
    target that stays inside lexically and goes through no other link is stored as it is; otherwise as
    the equivalent direct relative path, so that :func:`safe_extract` accepts the archive.
    """
    if not linkname or linkname.startswith("/"):
        return None
    try:
        resolved = _resolve(root, link[:-1], linkname)
        if resolved is None:
            return None
        if lexical_target(link[:-1], linkname, None) is not None and not _goes_through_link(root, link, linkname):
            return linkname
        return os.path.relpath(os.path.join("/", *resolved), os.path.join("/", *link[:-1]))
    except OSError:
        return None


def _is_link(root: Path, parts: Parts) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(os.path.join(root, *parts)).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False  # dangling: the kernel stops here too


def _goes_through_link(root: Path, link: Parts, linkname: str) -> bool:
    stack = list(link[:-1])
    components = [c for c in linkname.split("/") if c not in ("", ".")]
    for component in components[:-1]:
        if component == "..":
            stack.pop()
        else:
            stack.append(component)
            if _is_link(root, tuple(stack)):
                return True
    return False


def _resolve(root: Path, parent: Parts, linkname: str) -> Parts | None:
    """The fully resolved ``parent/linkname`` inside ``root``, or None if it leaves the tree or loops."""
    stack = list(parent)
    pending = [c for c in linkname.split("/") if c not in ("", ".")]
    hops = 0
    while pending:
        component = pending.pop(0)
        if component == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(component)
        if _is_link(root, tuple(stack)):
            hops += 1
            target = os.readlink(os.path.join(root, *stack))
            if not target or target.startswith("/") or hops > MAX_LINK_HOPS:
                return None
            stack.pop()
            pending[:0] = [c for c in target.split("/") if c not in ("", ".")]
    return tuple(stack)


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a tree walked without following links (``fd`` is the open parent directory)."""

    parts: Parts
    kind: str  # "dir", "file", "link" (linkname is what to store, None = leaves the tree), "other"
    dir_fd: int
    st: os.stat_result  # lstat
    linkname: str | None = None

    @property
    def name(self) -> str:
        return self.parts[-1]

    def open(self) -> int:
        """Open the file for reading without following a link; raises if it is no longer a plain file."""
        fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "no longer a regular file", "/".join(self.parts))
        return fd


def walk_tree(root: Path) -> Iterator[TreeEntry]:
    """Every entry under ``root`` (sorted, parents first); a ``root`` that is a link or missing is empty."""
    try:
        root_fd = os.open(root, DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        log.warning("%s is a link; it is not followed and counts as empty", root)
        return
    yield from _walk(root, root_fd, ())


def _walk(root: Path, dir_fd: int, parts: Parts) -> Iterator[TreeEntry]:
    try:
        with os.scandir(dir_fd) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            here = (*parts, name)
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISLNK(st.st_mode):
                target = contained_link_target(root, here, os.readlink(name, dir_fd=dir_fd))
                yield TreeEntry(here, "link", dir_fd, st, target)
            elif stat.S_ISDIR(st.st_mode):
                yield TreeEntry(here, "dir", dir_fd, st)
                yield from _walk(root, os.open(name, DIR_FLAGS, dir_fd=dir_fd), here)
            else:
                yield TreeEntry(here, "file" if stat.S_ISREG(st.st_mode) else "other", dir_fd, st)
    finally:
        os.close(dir_fd)


def warn_left_out(source: Path, left_out: list[str]) -> None:
    if left_out:
        shown = ", ".join(left_out[:20]) + (f" and {len(left_out) - 20} more" if len(left_out) > 20 else "")
        log.warning("%s: left out %d entr%s that lead outside the tree or are not regular files: %s",
                    source, len(left_out), "y" if len(left_out) == 1 else "ies", shown)


def create_tar_gz(source_dir: str | Path | None, archive: str | Path, *, compress: bool = True) -> Path:
    """Pack the entries of ``source_dir`` at the archive root (as SageMaker and the SDK do).

    A missing ``source_dir`` (or None) gives an empty archive.

    Links are never followed: one that stays inside the tree is packed as a link, one that leaves it
    (absolute, or resolving outside) is left out with one warning, as are sockets, FIFOs and devices. The
    archive is written to a temporary file beside ``archive`` and renamed into place.
    """
    source = None if source_dir is None else Path(source_dir)
    target = Path(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    left_out: list[str] = []
    try:
        with tarfile.open(tmp, "w:gz" if compress else "w") as tar:
            for entry in walk_tree(source) if source is not None else ():
                arcname = "/".join(entry.parts)
                if entry.kind == "dir" or (entry.kind == "link" and entry.linkname is not None):
                    info = tarfile.TarInfo(arcname)
                    info.mode, info.mtime = stat.S_IMODE(entry.st.st_mode), int(entry.st.st_mtime)
                    info.uid, info.gid = entry.st.st_uid, entry.st.st_gid
                    info.type = tarfile.DIRTYPE if entry.kind == "dir" else tarfile.SYMTYPE
                    info.linkname = entry.linkname or ""
                    tar.addfile(info)
                elif entry.kind == "file":
                    with os.fdopen(entry.open(), "rb") as f:
                        tar.addfile(tar.gettarinfo(arcname=arcname, fileobj=f), f)
                else:
                    left_out.append(arcname)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if source is not None:
        warn_left_out(source, left_out)
    log.debug("wrote %s from %s", target, source)
    return target
