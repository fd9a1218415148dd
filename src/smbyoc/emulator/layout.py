"""Lay out a host's ``/opt/ml`` tree exactly as SageMaker would, under any directory.

Used by both backends: the process backend points ``SAGEMAKER_BASE_DIR`` at the tree, the Docker backend
mounts its parts at ``/opt/ml``.
"""

from __future__ import annotations

import logging
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from smbyoc.emulator.job_spec import ChannelSpec, TrainingJobSpec
from smbyoc.errors import ConfigError
from smbyoc.opt_ml import hyperparameters_file, input_data_config_file, resource_config_file
from smbyoc.opt_ml.input_data_config_file import Channel
from smbyoc.opt_ml.resource_config_file import ResourceConfig
from smbyoc.paths import Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostTree:
    """One host's tree; ``paths`` is the SageMaker layout rooted at ``root``."""

    host: str
    root: Path

    @property
    def paths(self) -> Paths:
        return Paths(self.root)


def channel_files(source: Path) -> list[Path]:
    """Every file of a channel source, sorted by key (relative path) as S3 lists them."""
    if source.is_file():
        return [source]
    entries = list(source.rglob("*"))
    check_no_folder_links(entries)
    files = [p for p in entries if p.is_file()]  # (a link to a file counts as the file)
    return sorted(files, key=lambda p: p.relative_to(source).as_posix())


def check_no_folder_links(entries: list[Path], option: str = "") -> None:
    """Refuse a link to a folder among ``entries`` (one ConfigError naming it): an S3 prefix has no links, and
    following one could leave the input or loop."""
    for entry in entries:
        if entry.is_symlink() and entry.is_dir():
            raise ConfigError("a link to a folder (an S3 prefix has no links); give the folder itself or copy it "
                              "in", key=f"{option} {entry}".strip())


def shard(files: list[Path], host_index: int, host_count: int) -> list[Path]:
    """``ShardedByS3Key``: host ``i`` (0-based) of ``n`` gets every ``n``-th object of the sorted keys."""
    return files[host_index::host_count]


def channel_objects(channel: ChannelSpec, host_index: int = 0, host_count: int = 1) -> list[tuple[str, Path]]:
    """``(key, local file)`` of every object ``host_index`` (0-based) of ``host_count`` receives.

    The key is where the object lands inside the channel. A ``ManifestFile`` channel is the list of files
    its manifest names (in the manifest's order); a folder is its files sorted by key. ``ShardedByS3Key``
    gives each host every ``n``-th object.
    """
    if channel.data_type == "ManifestFile":
        from smbyoc.emulator.manifest import read_manifest

        objects = [(entry.key, entry.path) for entry in read_manifest(channel.source)]
    elif channel.source.is_file():
        objects = [(channel.source.name, channel.source)]
    else:
        objects = [(f.relative_to(channel.source).as_posix(), f) for f in channel_files(channel.source)]
    if channel.distribution == "ShardedByS3Key":
        objects = objects[host_index::host_count]
    return objects


def _copy_channel(channel: ChannelSpec, target: Path, host_index: int, host_count: int) -> int:
    target.mkdir(parents=True, exist_ok=True)
    total = 0
    for key, file in channel_objects(channel, host_index, host_count):
        destination = target / key
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)
        total += destination.stat().st_size
    if channel.input_mode == "FastFile":
        _make_read_only(target)
    return total


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    """Undo :func:`_make_read_only` so the tree can be removed."""
    if not root.exists():
        return
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _channel(channel: ChannelSpec, paths: Paths) -> Channel:
    """The ``inputdataconfig.json`` entry of a requested channel (``CompressionType`` only when not None)."""
    return Channel(
        name=channel.name, input_mode=channel.input_mode, content_type=channel.content_type or None,
        s3_distribution_type=channel.distribution, record_wrapper_type=channel.record_wrapper,
        compression_type=None if channel.compression == "None" else channel.compression,
        path=paths.channel_dir(channel.name),
    )


def lay_out_host(spec: TrainingJobSpec, host: str, root: Path, *, copy_channels: bool = True) -> HostTree:
    """Create ``root`` as ``host``'s ``/opt/ml``: config files, channel data, empty output dirs."""
    tree = HostTree(host, root)
    paths = tree.paths
    for directory in (paths.input_config_dir, paths.input_data_dir, paths.model_dir, paths.output_dir,
                      paths.output_data_dir, paths.checkpoints_dir, paths.code_dir):
        directory.mkdir(parents=True, exist_ok=True)
    hyperparameters_file.write(paths, spec.hyperparameters)
    resource_config_file.write(
        paths, ResourceConfig.homogeneous(host, spec.hosts, spec.instance_type, spec.network_interface_name)
    )
    input_data_config_file.write(paths, [_channel(channel, paths) for channel in spec.channels])
    if copy_channels:
        hosts = spec.hosts
        for channel in spec.channels:
            if channel.input_mode == "Pipe":
                continue  # streamed through <channel>_<epoch> FIFOs by the pipe feeder while the job runs
            size = _copy_channel(channel, paths.channel_dir(channel.name), hosts.index(host), len(hosts))
            log.debug("channel %s: %d bytes copied for %s", channel.name, size, host)
    return tree
