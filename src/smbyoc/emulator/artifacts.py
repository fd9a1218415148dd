"""Training job artifacts: ``model.tar.gz`` from ``/opt/ml/model`` and ``output.tar.gz`` from
``/opt/ml/output/data`` only, written to ``<output-dir>/<job-name>/output/`` (contract.md §1.6).

With several hosts, their model directories are merged into one archive (SageMaker aggregates them);
a file written by two hosts is a name clash and is reported.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smbyoc.archives import create_tar_gz
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

    The first host (in sorted order) wins a clash, and the clash is reported.
    """
    owners: dict[str, str] = {}
    clashes: list[str] = []
    target.mkdir(parents=True, exist_ok=True)
    for host, source in sources:
        if not source.is_dir():
            continue
        for file in sorted(source.rglob("*")):
            if file.is_dir():
                continue
            relative = file.relative_to(source).as_posix()
            if relative in owners:
                clashes.append(f"{relative} (written by {owners[relative]} and {host})")
                continue
            owners[relative] = host
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination, follow_symlinks=True)
    return clashes


def job_output_dir(output_dir: Path, job_name: str) -> Path:
    return output_dir / job_name / "output"


def collect(
    hosts: Sequence[tuple[str, Path]], output_dir: Path, job_name: str, *, compress: bool = True
) -> JobArtifacts:
    """Write ``model.tar.gz`` and ``output.tar.gz`` for the hosts' trees (``(host, base_dir)`` pairs)."""
    destination = job_output_dir(output_dir, job_name)
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create: {e.strerror}", source=str(destination)) from e
    if len(hosts) == 1:
        host_root = hosts[0][1]
        model = create_tar_gz(host_root / "model", destination / "model.tar.gz", compress=compress)
        output = create_tar_gz(host_root / "output" / "data", destination / "output.tar.gz", compress=compress)
        clashes: list[str] = []
    else:
        with tempfile.TemporaryDirectory(prefix="smbyoc-merge-") as tmp:
            merged_model = Path(tmp) / "model"
            merged_output = Path(tmp) / "output"
            clashes = merge_dirs([(h, r / "model") for h, r in hosts], merged_model)
            clashes += merge_dirs([(h, r / "output" / "data") for h, r in hosts], merged_output)
            model = create_tar_gz(merged_model, destination / "model.tar.gz", compress=compress)
            output = create_tar_gz(merged_output, destination / "output.tar.gz", compress=compress)
    for clash in clashes:
        log.warning("artifact name clash between hosts: %s", clash)
    return JobArtifacts(
        Artifact(model, model.stat().st_size), Artifact(output, output.stat().st_size), tuple(clashes)
    )
