"""Host-name waiting and torchrun settings."""

from __future__ import annotations

import sys

import pytest

from smbyoc.errors import ConfigError
from smbyoc.training.distributed import HostResolutionError, TorchDistributedSettings, wait_for_hosts


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_single_host_and_studio_local_mode_do_not_wait():
    def never(host):
        raise AssertionError("must not resolve")

    wait_for_hosts(["algo-1"], resolve=never)
    wait_for_hosts(["algo-1", "algo-2"], environ={"SM_STUDIO_LOCAL_MODE": "true"}, resolve=never)


def test_retries_with_backoff_until_resolved():
    clock = FakeClock()
    ready_at = {"algo-1": 0.0, "algo-2": 1.0}
    wait_for_hosts(["algo-1", "algo-2"], timeout=60, resolve=lambda h: clock.now >= ready_at[h],
                   sleep=clock.sleep, clock=clock)
    assert clock.sleeps[:4] == [0.1, 0.2, 0.4, 0.8]


def test_timeout_names_the_hosts_that_never_resolved():
    clock = FakeClock()
    with pytest.raises(HostResolutionError, match=r"within 100 s.*algo-2, algo-3") as info:
        wait_for_hosts(["algo-1", "algo-2", "algo-3"], timeout=100, resolve=lambda h: h == "algo-1",
                       sleep=clock.sleep, clock=clock)
    assert info.value.hosts == ["algo-2", "algo-3"]
    assert max(clock.sleeps) <= 30.0 and clock.now == pytest.approx(100.0)


def test_timeout_from_environment_and_real_resolution():
    clock = FakeClock()
    with pytest.raises(HostResolutionError, match="within 2 s"):
        wait_for_hosts(["a", "b"], environ={"SMBYOC_HOST_RESOLUTION_TIMEOUT": "2"},
                       resolve=lambda h: False, sleep=clock.sleep, clock=clock)
    wait_for_hosts(["localhost", "127.0.0.1"], timeout=5)  # the real resolver


def test_torch_settings_multi_host():
    s = TorchDistributedSettings.from_hosts(["algo-1", "algo-2", "algo-3"], "algo-2", num_gpus=4, environ={})
    assert (s.master_addr, s.master_port, s.nnodes, s.nproc_per_node, s.node_rank) == ("algo-1", 29500, 3, 4, 1)
    assert s.world_size == 12
    env = s.to_env()
    assert env["MASTER_ADDR"] == "algo-1" and env["WORLD_SIZE"] == "12" and env["NODE_RANK"] == "1"
    assert "RANK" not in env  # torchrun sets it per worker
    assert s.torchrun_argv("train.py", ["--epochs", "3"]) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "3", "--nproc-per-node", "4",
        "--node-rank", "1", "--master-addr", "algo-1", "--master-port", "29500", "train.py", "--epochs", "3"]


def test_torch_settings_single_host_and_overrides():
    s = TorchDistributedSettings.from_hosts(
        ["algo-1"], "algo-1", environ={"SMBYOC_MASTER_PORT": "1234"})
    assert (s.master_addr, s.master_port, s.nproc_per_node, s.world_size) == ("127.0.0.1", 1234, 1, 1)
    assert s.to_env()["RANK"] == "0" and s.to_env()["LOCAL_RANK"] == "0"
    s2 = TorchDistributedSettings.from_hosts(["algo-1", "algo-2"], "algo-2",
                                             environ={"SMBYOC_NPROC_PER_NODE": "2"}, master_port=9)
    assert (s2.nproc_per_node, s2.world_size, s2.master_port) == (2, 4, 9)
    with pytest.raises(ConfigError, match="algo-9"):
        TorchDistributedSettings.from_hosts(["algo-1"], "algo-9")
