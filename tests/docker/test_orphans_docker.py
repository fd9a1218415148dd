"""A SIGKILLed `smbyoc local-train` / `local-serve` in docker mode: `ps` shows it orphaned, and the next
`local-*` command or `stop --all` removes its containers, network and temporary tree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def environment(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}


def smbyoc(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=environment(tmp_path))


def labelled(docker_client, job: str) -> list[str]:
    label = {"label": f"com.smbyoc.job={job}"}
    return ([f"container {c.name}" for c in docker_client.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in docker_client.networks.list(filters=label)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_killed_local_train_is_orphaned_then_stop_all_removes_everything(
    foreign_image: str, docker_client, tmp_path: Path
) -> None:
    job = "dk-orphan-train"
    proc = subprocess.Popen([*SMBYOC, "local-train", "--image", foreign_image, "-H", "sleep=300", "--job-name", job,
                             "-o", "out"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=environment(tmp_path))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "sleeping" in line:
            break
    assert any("sleeping" in line for line in seen), "".join(seen)
    proc.kill()
    proc.wait(30)
    proc.stdout.close()
    names = labelled(docker_client, job)
    assert any(n.startswith("container ") for n in names) and any(n.startswith("network ") for n in names)

    listed = smbyoc(tmp_path, "ps", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    [record] = report["TrainingJobs"]
    assert (record["Name"], record["State"], record["Mode"]) == (job, "orphaned", "docker")
    mine = [r for r in report["DockerResources"] if r["Job"] == job]
    assert {r["Kind"] for r in mine} == {"container", "network"} and {r["State"] for r in mine} == {"orphaned"}

    swept = smbyoc(tmp_path, "stop", "--all")
    assert swept.returncode == 0, swept.stderr
    [line] = [line for line in swept.stderr.splitlines() if line.startswith("smbyoc: removed")]
    assert f"training {job}" in line and "container" in line, swept.stderr
    assert labelled(docker_client, job) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert json.loads(smbyoc(tmp_path, "ps", "--json").stdout)["TrainingJobs"] == []


def test_killed_local_serve_is_swept_by_the_next_local_command(
    foreign_image: str, docker_client, tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    ready = tmp_path / "ready.txt"
    proc = subprocess.Popen([*SMBYOC, "local-serve", "--image", foreign_image, "--model-data", "model",
                             "--port", str(free_port()), "--ready-file", str(ready)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(tmp_path))
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the endpoint never became ready"
        time.sleep(0.1)
    proc.kill()
    proc.wait(30)

    [endpoint] = json.loads(smbyoc(tmp_path, "ps", "--json").stdout)["Endpoints"]
    assert endpoint["State"] == "orphaned" and endpoint["Mode"] == "docker", endpoint
    tree = Path(endpoint["Tree"])
    assert tree.exists()
    container_jobs = [c.labels["com.smbyoc.job"] for c in docker_client.containers.list(
        all=True, filters={"label": f"com.smbyoc.owner-pid={proc.pid}"})]
    assert len(container_jobs) == 1

    nxt = smbyoc(tmp_path, "local-train", "--image", foreign_image, "--job-name", "dk-after-serve", "-o", "out")
    assert nxt.returncode == 0, nxt.stderr
    lines = [line for line in nxt.stderr.splitlines() if line.startswith("smbyoc: removed")]
    assert len(lines) == 1 and f"endpoint {tree.name}" in lines[0], nxt.stderr
    assert labelled(docker_client, container_jobs[0]) == []
    assert not tree.exists()
    assert json.loads(smbyoc(tmp_path, "ps", "--json").stdout)["Endpoints"] == []
