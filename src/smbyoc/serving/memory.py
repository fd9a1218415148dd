"""Memory accounting for multi-model endpoints: the budget, and the memory the whole ``serve`` uses now.

SageMaker's MME containers answer ``507`` to a load when they are out of memory, and SageMaker then unloads
the least recently used model and retries (contract.md §5). ``serve`` decides that *before* the kernel's OOM
killer does: a load is refused when the serve's memory plus the model's size on disk would pass the budget,
and a model that turns out larger once loaded is unloaded again.

* **Budget**: ``SMBYOC_MME_MEMORY_BUDGET_MB``, else 90 % of the memory limit of the cgroup ``serve`` runs in
  (cgroup v2 ``memory.max``, or v1 ``memory.limit_in_bytes``; the tightest of the cgroup and its ancestors),
  else 90 % of ``MemTotal``.
* **Usage**: inside a limited cgroup, the cgroup's working set (``memory.current`` less ``inactive_file``,
  what ``docker stats`` shows: the page cache the kernel can drop does not count); otherwise the summed
  proportional set size (PSS, ``/proc/<pid>/smaps_rollup``; RSS where that cannot be read) of the processes
  in the gunicorn master's process group, so that pages the workers share with the master count once.

Every function takes the file-system ``root`` so that tests can hand it a fake ``/proc`` and ``/sys``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: The share of the memory limit (or of MemTotal) the default budget allows.
BUDGET_SHARE = 0.9
#: cgroup v1 writes "no limit" as a number close to 2**63.
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Cgroup:
    """The cgroup ``serve`` runs in, as far as memory goes."""

    version: int
    directory: Path  # where this process's usage is read
    limit: int | None  # bytes; None: no limit here or above


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _own_cgroup_path(root: Path, version: int) -> str:
    """This process's cgroup path from ``/proc/self/cgroup`` (v2: ``0::<path>``; v1: the ``memory`` line)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if (version == 2 and hierarchy == "0" and controllers == "") or (
            version == 1 and "memory" in controllers.split(",")
        ):
            return path or "/"
    return "/"


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors up to the mount, leaf first (the mount alone when the path
    does not exist under it, as inside a container's own cgroup namespace)."""
    leaf = mount / path.lstrip("/")
    if not leaf.is_dir() or mount not in (leaf, *leaf.parents):
        leaf = mount
    dirs = [leaf]
    while dirs[-1] != mount:
        dirs.append(dirs[-1].parent)
    return dirs


def find_cgroup(root: Path = Path("/")) -> Cgroup | None:
    """The memory cgroup of this process (v2 preferred), or None when none is mounted."""
    v2 = root / "sys/fs/cgroup"
    if (v2 / "cgroup.controllers").is_file():
        dirs = _cgroup_dirs(v2, _own_cgroup_path(root, 2))
        limits = [n for n in (_read_int(d / "memory.max") for d in dirs) if n is not None]
        return Cgroup(2, dirs[0], min(limits) if limits else None)
    v1 = root / "sys/fs/cgroup/memory"
    if (v1 / "memory.usage_in_bytes").is_file():
        dirs = _cgroup_dirs(v1, _own_cgroup_path(root, 1))
        limits = [n for n in (_read_int(d / "memory.limit_in_bytes") for d in dirs)
                  if n is not None and n < _V1_UNLIMITED]
        return Cgroup(1, dirs[0], min(limits) if limits else None)
    return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_usage(cgroup: Cgroup) -> int:
    """The cgroup's working set in bytes: its charged memory less the inactive page cache."""
    if cgroup.version == 2:
        current = _read_int(cgroup.directory / "memory.current") or 0
        return max(0, current - _stat_value(cgroup.directory / "memory.stat", "inactive_file"))
    current = _read_int(cgroup.directory / "memory.usage_in_bytes") or 0
    return max(0, current - _stat_value(cgroup.directory / "memory.stat", "total_inactive_file"))


def mem_total(root: Path = Path("/")) -> int:
    """``MemTotal`` of ``/proc/meminfo`` in bytes (0 when unreadable)."""
    return _meminfo_kib(root / "proc/meminfo", "MemTotal:") * 1024


def _meminfo_kib(path: Path, key: str) -> int:
    try:
        with path.open() as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _process_group(stat_text: str) -> int | None:
    """The process group field of ``/proc/<pid>/stat`` (the command name may hold spaces and parentheses)."""
    fields = stat_text.rpartition(")")[2].split()
    return int(fields[2]) if len(fields) > 2 and fields[2].lstrip("-").isdigit() else None


def resident_memory(pid_dir: Path) -> int:
    """One process's resident set size in bytes (``statm``: about 30 µs); 0 when unreadable."""
    try:
        resident = int((pid_dir / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def process_memory(pid_dir: Path) -> int:
    """One process's proportional set size in bytes, or its RSS when ``smaps_rollup`` is unreadable."""
    pss = _meminfo_kib(pid_dir / "smaps_rollup", "Pss:")
    if pss:
        return pss * 1024
    return resident_memory(pid_dir)


def group_members(group: int, root: Path = Path("/")) -> list[Path]:
    """The ``/proc/<pid>`` directories of process group ``group``.

    gunicorn's master leads the group ``serve`` starts it in, so its children (``/proc/<pid>/task/<pid>/children``,
    a few entries) are looked at first; only when that file is unreadable is all of ``/proc`` scanned (which
    costs milliseconds on a busy machine)."""
    proc = root / "proc"
    candidates: list[str]
    try:
        children = (proc / str(group) / "task" / str(group) / "children").read_text().split()
        candidates = [str(group), *children]
    except OSError:
        try:
            candidates = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()]
        except OSError:
            return []
    members = []
    for pid in candidates:
        try:
            stat_text = (proc / pid / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        if _process_group(stat_text) == group:
            members.append(proc / pid)
    return members


def process_group_usage(pgid: int | None = None, root: Path = Path("/"), *, precise: bool = True) -> int:
    """The summed memory of the processes in process group ``pgid`` (default: this process's group, which for a
    gunicorn worker of ``serve`` is the master and all its workers): PSS (:func:`process_memory`, pages shared
    after the fork counted once) when ``precise``, else RSS (an upper bound of PSS, much cheaper to read)."""
    group = os.getpgrp() if pgid is None else pgid
    one = process_memory if precise else resident_memory
    return sum(one(member) for member in group_members(group, root))


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory the serve may use (``limit`` bytes, and where that number came from) and how its
    current use is measured."""

    limit: int
    source: str
    meter: str
    measure: Callable[[], int]
    #: A cheaper upper bound of ``measure`` (RSS instead of PSS): when it fits the budget, ``measure`` is skipped.
    bound: Callable[[], int] | None = None

    @classmethod
    def from_env(cls, budget_mb: int | None, root: Path = Path("/")) -> MemoryBudget:
        cgroup = find_cgroup(root)
        limited = cgroup is not None and cgroup.limit is not None
        if limited:
            assert cgroup is not None
            meter = f"the working set of cgroup v{cgroup.version} {cgroup.directory}"

            def measure() -> int:
                return cgroup_usage(cgroup)
        else:
            meter = "the summed PSS of the gunicorn master's process group"

            def measure() -> int:
                return process_group_usage(root=root)

            def upper_bound() -> int:
                return process_group_usage(root=root, precise=False)
        bound = None if limited else upper_bound
        if budget_mb is not None:
            return cls(budget_mb * MIB, f"SMBYOC_MME_MEMORY_BUDGET_MB={budget_mb}", meter, measure, bound)
        if limited:
            assert cgroup is not None and cgroup.limit is not None
            limit, what = cgroup.limit, f"the cgroup memory limit ({cgroup.limit // MIB} MiB)"
        else:
            limit, what = mem_total(root), f"MemTotal ({mem_total(root) // MIB} MiB)"
        return cls(int(limit * BUDGET_SHARE), f"{BUDGET_SHARE:.0%} of {what}", meter, measure, bound)

    def usage(self) -> int:
        return self.measure()

    def _fits(self, extra: int) -> bool:
        """Whether the cheap upper bound already shows ``extra`` more bytes fit (no precise measurement then)."""
        return self.bound is not None and self.bound() + extra <= self.limit

    def refuse_before(self, name: str, estimate: int) -> str | None:
        """Why loading ``name`` (about ``estimate`` bytes) must be refused now, or None."""
        if self._fits(estimate):
            return None
        used = self.usage()
        if used + estimate <= self.limit:
            return None
        return (f"out of memory: loading model {name!r} (about {_mib(estimate)} on disk) with the serve using "
                f"{_mib(used)} would pass its memory budget of {_mib(self.limit)} ({self.source})")

    def refuse_after(self, name: str) -> str | None:
        """Why the just-loaded ``name`` must be unloaded again, or None."""
        if self._fits(0):
            return None
        used = self.usage()
        if used <= self.limit:
            return None
        return (f"out of memory: with model {name!r} loaded the serve uses {_mib(used)}, over its memory "
                f"budget of {_mib(self.limit)} ({self.source}); the model was unloaded")


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def directory_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symbolic links to files are followed, to directories not):
    the estimate of what loading a model adds."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


_LIBC: list[object] = []


def release_memory() -> None:
    """After a model is unloaded: collect cycles, and hand freed heap back to the OS (glibc ``malloc_trim``),
    so that the next measurement sees the memory as free."""
    gc.collect()
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            _LIBC.append(ctypes.CDLL(name) if name else None)
        except OSError:
            _LIBC.append(None)
    libc = _LIBC[0]
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
