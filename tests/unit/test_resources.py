"""CPU / GPU / Neuron counting against fake cgroup trees and fake executables."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from smbyoc.training import resources


def put(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def eight() -> int:
    return 8


# ------------------------------------------------------------------------------------------ CPUs


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1), ("max 100000", 8), ("1600000 100000", 8)],
)
def test_cgroup_v2_quota_caps_affinity(tmp_path: Path, cpu_max: str, expected: int) -> None:
    put(tmp_path, "proc/self/cgroup", "0::/\n")
    put(tmp_path, "sys/fs/cgroup/cpu.max", cpu_max + "\n")
    assert resources.count_cpus(tmp_path, affinity=eight) == expected


def test_cgroup_v2_nested_cgroup_takes_smallest_limit(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    put(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000")
    put(tmp_path, "sys/fs/cgroup/kubepods/cpu.max", "600000 100000")
    put(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "300000 100000")
    assert resources.cgroup_cpu_limit(tmp_path) == 3.0
    assert resources.count_cpus(tmp_path, affinity=eight) == 3


def test_cgroup_v2_host_path_not_mounted_uses_mount_point(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "0::/system.slice/docker-abc.scope\n")
    put(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert resources.count_cpus(tmp_path, affinity=eight) == 2


@pytest.mark.parametrize(("quota", "expected"), [("50000", 1), ("250000", 3), ("-1", 8)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, expected: int) -> None:
    put(tmp_path, "proc/self/cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    put(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", quota)
    put(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert resources.count_cpus(tmp_path, affinity=eight) == expected


def test_no_cgroup_information_uses_affinity(tmp_path: Path) -> None:
    assert resources.cgroup_cpu_limit(tmp_path) is None
    assert resources.count_cpus(tmp_path, affinity=eight) == 8


def test_garbage_cgroup_files_are_ignored(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "nonsense\n0::/\n")
    put(tmp_path, "sys/fs/cgroup/cpu.max", "lots 100000")
    assert resources.count_cpus(tmp_path, affinity=eight) == 8


def test_this_machine() -> None:
    count = resources.count_cpus()
    assert 1 <= count <= (os.cpu_count() or 1)
    assert count <= len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------------------ GPUs


def test_gpus_from_nvidia_smi_lines(tmp_path: Path) -> None:
    smi = script(tmp_path, "nvidia-smi", 'printf "GPU 0: A100 (UUID: x)\\nGPU 1: A100 (UUID: y)\\nwarning\\n"')
    assert resources.count_gpus(tmp_path, command=[smi, "--list-gpus"]) == 2


def test_gpus_fall_back_to_proc_when_nvidia_smi_fails(tmp_path: Path) -> None:
    smi = script(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    for i in range(3):
        (tmp_path / "proc/driver/nvidia/gpus" / f"0000:0{i}:00.0").mkdir(parents=True)
    assert resources.count_gpus(tmp_path, command=[smi]) == 3


def test_no_nvidia_smi_and_no_driver_means_zero(tmp_path: Path) -> None:
    assert resources.count_gpus(tmp_path, command=[str(tmp_path / "missing-nvidia-smi")]) == 0


def test_hanging_nvidia_smi_is_abandoned(tmp_path: Path) -> None:
    smi = script(tmp_path, "nvidia-smi", "exec sleep 30")
    started = time.monotonic()
    assert resources.count_gpus(tmp_path, command=[smi], timeout=0.3) == 0
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------- Neuron


def test_neuron_cores_summed(tmp_path: Path) -> None:
    ls = script(tmp_path, "neuron-ls", """echo '[{"neuron_device": 0, "nc_count": 2}, {"nc_count": 2}, {"x": 1}]'""")
    assert resources.count_neuron_cores("ml.inf2.xlarge", command=[ls, "-j"]) == 4


@pytest.mark.parametrize("body", ["echo 'not json'", "echo '{\"nc_count\": 2}'", "exit 1"])
def test_bad_neuron_ls_output_means_zero(tmp_path: Path, body: str) -> None:
    assert resources.count_neuron_cores(command=[script(tmp_path, "neuron-ls", body)]) == 0


def test_missing_neuron_ls_means_zero(tmp_path: Path) -> None:
    assert resources.count_neuron_cores(command=[str(tmp_path / "neuron-ls")]) == 0


def test_trn2_48xlarge_is_fixed_like_the_toolkit(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ls = script(tmp_path, "neuron-ls", f"touch {marker}; echo '[]'")
    assert resources.count_neuron_cores("ml.trn2.48xlarge", command=[ls]) == 64
    assert not marker.exists()


def test_an_instance_larger_than_the_machine_gets_all_its_cpus(caplog: pytest.LogCaptureFixture) -> None:
    from smbyoc.emulator.containers import resource_args
    from smbyoc.emulator.instance_types import lookup

    big = lookup("ml.c6g.4xlarge")  # 16 vCPUs, 32 GiB
    assert big.arch == "arm64" and lookup("ml.r8g.xlarge").memory_bytes == 32 * 1024**3
    with caplog.at_level("WARNING"):
        args = resource_args(big, None, host_cpus=2)
    assert args["nano_cpus"] == 2 * 10**9 and args["mem_limit"] == big.memory_bytes
    assert "16 vCPUs and this machine 2" in caplog.text
    assert resource_args(lookup("ml.m5.large"), None, host_cpus=2)["nano_cpus"] == 2 * 10**9
