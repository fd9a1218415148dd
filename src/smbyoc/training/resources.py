"""How many CPUs, GPUs and Neuron cores this container may use.

Every probe takes an injectable file-system root and command so tests can run it against fake files and
fake executables; none of them raises for a missing driver, binary or file, they report 0 (GPUs,
Neuron cores) or fall back to the affinity mask (CPUs).

Intentional difference from sagemaker-training: the toolkit reports ``multiprocessing.cpu_count()``,
the host's CPU count, even when the container is limited by a cgroup CPU quota (``docker run --cpus``).
:func:`count_cpus` honours the affinity mask and the cgroup v1/v2 quota, so ``SM_NUM_CPUS`` matches
what the container can really use (the emulator limits containers to the instance type's vCPUs).
GPU and Neuron counting follow the toolkit's rules (``nvidia-smi --list-gpus`` lines starting with
``GPU ``; ``neuron-ls -j`` summing ``nc_count``; 64 cores on ``trn2.48xlarge``), with two fallbacks the
toolkit lacks: a probe that hangs is abandoned after ``timeout`` seconds, and when ``nvidia-smi`` cannot
run the GPUs listed under ``/proc/driver/nvidia/gpus`` are counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

NVIDIA_SMI_COMMAND: tuple[str, ...] = ("nvidia-smi", "--list-gpus")
NEURON_LS_COMMAND: tuple[str, ...] = ("neuron-ls", "-j")
DEFAULT_PROBE_TIMEOUT = 10.0

#: Instance types for which the toolkit hard-codes the Neuron core count instead of asking neuron-ls.
_FIXED_NEURON_CORES = {"trn2.48xlarge": 64}


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_lines(root: Path) -> list[tuple[str, list[str], str]]:
    """``/proc/self/cgroup`` as (hierarchy id, controllers, path) triples."""
    text = _read(root / "proc" / "self" / "cgroup")
    entries: list[tuple[str, list[str], str]] = []
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            entries.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return entries


def _candidate_dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory and its ancestors up to the mount point (innermost first).

    Inside a container the path in ``/proc/self/cgroup`` often names a host path that is not mounted;
    then only the mount point itself (the container's own cgroup) exists and is used.
    """
    parts = [p for p in cgroup_path.split("/") if p]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    dirs.append(mount)
    return dirs


def _quota_v2(mount: Path, cgroup_path: str) -> float | None:
    limits: list[float] = []
    for directory in _candidate_dirs(mount, cgroup_path):
        text = _read(directory / "cpu.max")
        if not text:
            continue
        fields = text.split()
        if len(fields) >= 1 and fields[0] != "max":
            try:
                quota = int(fields[0])
                period = int(fields[1]) if len(fields) > 1 else 100_000
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    return min(limits) if limits else None


def _quota_v1(mount: Path, cgroup_path: str) -> float | None:
    limits: list[float] = []
    for directory in _candidate_dirs(mount, cgroup_path):
        quota_text = _read(directory / "cpu.cfs_quota_us")
        period_text = _read(directory / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            continue
        if quota > 0 and period > 0:  # -1 means "no limit"
            limits.append(quota / period)
    return min(limits) if limits else None


def cgroup_cpu_limit(root: Path | str = "/") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when unlimited/unknown."""
    root = Path(root)
    cgroup_root = root / "sys" / "fs" / "cgroup"
    limits: list[float] = []
    for hierarchy, controllers, path in _cgroup_lines(root):
        if hierarchy == "0" and not controllers:  # cgroup v2 unified hierarchy
            limit = _quota_v2(cgroup_root, path)
        elif "cpu" in controllers:
            mounts = [cgroup_root / ",".join(controllers), cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"]
            mount = next((m for m in mounts if m.is_dir()), None)
            limit = _quota_v1(mount, path) if mount is not None else None
        else:
            continue
        if limit is not None:
            limits.append(limit)
    if not limits and not _cgroup_lines(root):
        # No /proc/self/cgroup (odd sandbox): look at the mount point itself.
        for limit in (_quota_v2(cgroup_root, "/"), _quota_v1(cgroup_root / "cpu", "/")):
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def count_cpus(root: Path | str = "/", affinity: Callable[[], int] | None = None) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup quota rounded up (at least 1)."""
    available = (affinity or _affinity_cpus)()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        available = min(available, max(1, math.ceil(limit)))
    return max(1, available)


def _run(command: Sequence[str], timeout: float) -> str | None:
    """stdout of ``command``, or None when it is missing, fails or times out."""
    try:
        completed = subprocess.run(
            list(command), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("%s could not run: %s", command[0], e)
        return None
    if completed.returncode != 0:
        logger.debug("%s exited with %s", command[0], completed.returncode)
        return None
    return completed.stdout.decode("utf-8", errors="replace")


def count_gpus(
    root: Path | str = "/",
    command: Sequence[str] = NVIDIA_SMI_COMMAND,
    timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> int:
    """GPUs listed by ``nvidia-smi --list-gpus``; else the entries of /proc/driver/nvidia/gpus; else 0."""
    output = _run(command, timeout)
    if output is not None:
        return sum(1 for line in output.split("\n") if line.startswith("GPU "))
    gpus_dir = Path(root) / "proc" / "driver" / "nvidia" / "gpus"
    try:
        return sum(1 for _ in gpus_dir.iterdir())
    except OSError:
        logger.debug("no GPUs detected (normal without an NVIDIA driver)")
        return 0


def count_neuron_cores(
    instance_type: str = "local",
    command: Sequence[str] = NEURON_LS_COMMAND,
    timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> int:
    """Neuron cores: the sum of ``nc_count`` in ``neuron-ls -j``; 0 when neuron-ls is absent or fails."""
    for fixed_type, cores in _FIXED_NEURON_CORES.items():
        if fixed_type in instance_type:
            return cores
    output = _run(command, timeout)
    if output is None:
        return 0
    try:
        devices = json.loads(output)
    except ValueError:
        logger.warning("neuron-ls printed something that is not JSON; assuming no Neuron cores")
        return 0
    if not isinstance(devices, list):
        return 0
    total = 0
    for device in devices:
        if isinstance(device, dict):
            count = device.get("nc_count", 0)
            if isinstance(count, int) and not isinstance(count, bool):
                total += count
    return total
