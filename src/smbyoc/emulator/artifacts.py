"""Training job artifacts: ``model.tar.gz`` from ``/opt/ml/model`` and ``output.tar.gz`` from
``/opt/ml/output/data`` only, written to ``<output-dir>/<job-name>/output/`` (contract.md §1.6).

The trees were written by the training image, so links in them are never followed on the host: a link
that stays inside is kept as a link, one that leads outside is left out with one warning. Under ``sudo``
the archives and the folders created for them are given back to the invoking user.

With several hosts, their model directories are merged into one archive (SageMaker aggregates them);
a file written by two hosts is a name clash and is reported.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smbyoc.archives import create_tar_gz, walk_tree, warn_left_out
from smbyoc.emulator import containers
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Artifact:
    path: Path
    size: int


@dataclass(frozen=True)
class JobArtifacts:
    model: Artifact
    output: Artifact
    clashes: tuple[str, ...] = ()


def merge_dirs(sources: Sequence[tuple[str, Path]], target: Path) -> list[str]:
    """Copy each host's directory into ``target``; return the relative paths written by more than one host.

    The first host (in sorted order) wins a clash, and the clash is reported. Links are never followed:
    one that stays inside its host's tree is copied as a link, one that leaves it is left out with one
    warning (as :func:`~smbyoc.archives.create_tar_gz` does).
    """
    owners: dict[str, str] = {}
    clashes: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    for host, source in sources:
        left_out: list[str] = []
        blocked: set[tuple[str, ...]] = set()  # a directory here that another host wrote as a file or link
        for entry in walk_tree(source):
            relative = "/".join(entry.parts)
            destination = target.joinpath(*entry.parts)
            if any(entry.parts[:i] in blocked for i in range(1, len(entry.parts))):
                continue
            if entry.kind == "dir":
                if os.path.lexists(destination) and (destination.is_symlink() or not destination.is_dir()):
                    blocked.add(entry.parts)
                    clashes.append(f"{relative} (written by {owners.get(relative, 'another host')} and {host})")
                else:
                    destination.mkdir(exist_ok=True)
                continue
            if entry.kind == "other" or (entry.kind == "link" and entry.linkname is None):
                left_out.append(relative)
                continue
            if relative in owners or os.path.lexists(destination):
                clashes.append(f"{relative} (written by {owners.get(relative, 'another host')} and {host})")
                continue
            owners[relative] = host
            if entry.kind == "link":
                os.symlink(entry.linkname or "", destination)
                continue
            with os.fdopen(entry.open(), "rb") as src, open(destination, "xb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(destination, stat.S_IMODE(entry.st.st_mode))
            os.utime(destination, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))
        warn_left_out(source, left_out)
    return clashes


def _inside(root: Path, *parts: str) -> Path | None:
    """``root/parts`` if none of ``parts`` is a link (a training image may leave one there), else None."""
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            log.warning("%s is a link; it is not followed and counts as empty", path)
            return None
    return path


def _trees(hosts: Sequence[tuple[str, Path]], *parts: str) -> list[tuple[str, Path]]:
    return [(host, tree) for host, root in hosts if (tree := _inside(root, *parts)) is not None]


def _give_back(paths: Sequence[Path], owner: tuple[int, int]) -> None:
    """Under ``sudo``, hand what we wrote back to the invoking user (as the job tree is)."""
    if os.getuid() != 0 or owner == (os.getuid(), os.getgid()):
        return
    for path in paths:
        try:
            os.chown(path, *owner, follow_symlinks=False)
        except OSError as e:
            log.warning("could not give %s back to uid %d: %s", path, owner[0], e.strerror)


def job_output_dir(output_dir: Path, job_name: str) -> Path:
    return output_dir / job_name / "output"


def collect(
    hosts: Sequence[tuple[str, Path]], output_dir: Path, job_name: str, *, compress: bool = True,
    owner: tuple[int, int] | None = None,
) -> JobArtifacts:
    """Write ``model.tar.gz`` and ``output.tar.gz`` for the hosts' trees (``(host, base_dir)`` pairs).

    ``owner`` (default: the ``sudo`` caller, see :func:`~smbyoc.emulator.containers.invoking_owner`) gets
    the archives and the folders created for them.
    """
    destination = job_output_dir(output_dir, job_name)
    created = [p for p in (destination, *destination.parents) if not p.exists()]
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create: {e.strerror}", source=str(destination)) from e
    if len(hosts) == 1:
        host_root = hosts[0][1]
        model = create_tar_gz(_inside(host_root, "model"), destination / "model.tar.gz",
                              compress=compress)
        output = create_tar_gz(_inside(host_root, "output", "data"), destination / "output.tar.gz",
                               compress=compress)
        clashes: list[str] = []
    else:
        # Beside the hosts' trees, in the job's tree: a sweep after a killed CLI removes it with the rest.
        with tempfile.TemporaryDirectory(prefix="smbyoc-merge-", dir=hosts[0][1].parent) as tmp:
            merged_model = Path(tmp) / "model"
            merged_output = Path(tmp) / "output"
            clashes = merge_dirs(_trees(hosts, "model"), merged_model)
            clashes += merge_dirs(_trees(hosts, "output", "data"), merged_output)
            model = create_tar_gz(merged_model, destination / "model.tar.gz", compress=compress)
            output = create_tar_gz(merged_output, destination / "output.tar.gz", compress=compress)
    _give_back(list(dict.fromkeys([*reversed(created), destination.parent, destination, model, output])),
               containers.invoking_owner() if owner is None else owner)
    for clash in clashes:
        log.warning("artifact name clash between hosts: %s", clash)
    return JobArtifacts(
        Artifact(model, model.stat().st_size), Artifact(output, output.stat().st_size), tuple(clashes)
    )
