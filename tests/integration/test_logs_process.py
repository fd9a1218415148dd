"""`smbyoc logs` on real jobs in process mode: a `local-train` run and a job of `smbyoc api`, their whole logs,
`--tail`, `--follow` ending when the job ends, Ctrl-C, and an unknown name."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_support import FAST, clients, training_request
from smbyoc.api.server import ApiConfig, ApiServer

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]

PROGRAM = """
    import sys, time
    for i in range(5):
        print("step", i)
    time.sleep(float(sys.argv[sys.argv.index("--pause") + 1]) if "--pause" in sys.argv else 0)
    print("finished", flush=True)
"""


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(textwrap.dedent(PROGRAM))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("1,2\n")
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def smbyoc(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def local_train(cwd: Path, name: str, pause: float = 0) -> list[str]:
    return [*SMBYOC, "local-train", "--mode", "process", "-e", "train.py", "-s", "src", "-c", "train=data",
            "--job-name", name, "-o", "out", "-H", f"pause={pause}"]


def wait_for(path: Path, text: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < end, f"{text!r} never reached {path}"
        time.sleep(0.1)


def test_a_local_train_log_whole_tail_and_unknown(workdir: Path) -> None:
    run = subprocess.run(local_train(workdir, "logs-one"), cwd=workdir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "step 4" in run.stdout  # the program's output still reaches the terminal
    log_file = workdir / "state" / "logs" / "training-job-logs-one.log"
    assert "[algo-1] step 0" in log_file.read_text()

    whole = smbyoc("logs", "logs-one", cwd=workdir)
    assert whole.returncode == 0, whole.stderr
    lines = whole.stdout.splitlines()
    assert [line for line in lines if line.startswith("[algo-1] step")] == [f"[algo-1] step {i}" for i in range(5)]
    assert "[algo-1] finished" in lines
    assert all(line.startswith("[algo-1] ") for line in lines)

    tail = smbyoc("logs", "logs-one", "--tail", "3", cwd=workdir)
    assert tail.returncode == 0 and tail.stdout.splitlines() == lines[-3:]

    unknown = smbyoc("logs", "no-such-job", cwd=workdir)
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    message = unknown.stderr.strip().splitlines()
    assert len(message) == 1 and "no-such-job" in message[0]
    assert str(workdir / "state" / "logs") in message[0] and str(workdir / "state" / "api" / "logs") in message[0]


def test_follow_a_local_train_job_ends_with_the_job(workdir: Path) -> None:
    job = subprocess.Popen(local_train(workdir, "logs-follow", pause=3), cwd=workdir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(workdir / "state" / "logs" / "training-job-logs-follow.log", "step 4")
        began = time.monotonic()
        follow = smbyoc("logs", "logs-follow", "-f", "--tail", "1", cwd=workdir, timeout=60)
        assert follow.returncode == 0, follow.stderr
        assert job.wait(timeout=60) == 0
        lines = follow.stdout.splitlines()
        assert lines[0].startswith("[algo-1] ") and "[algo-1] finished" in lines  # printed as they came
        assert "[algo-1] step 3" not in lines  # --tail 1: only the last line that was there
        assert time.monotonic() - began < 30
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=60)


def test_ctrl_c_ends_follow_with_130(workdir: Path) -> None:
    job = subprocess.Popen(local_train(workdir, "logs-ctrl-c", pause=30), cwd=workdir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(workdir / "state" / "logs" / "training-job-logs-ctrl-c.log", "step 4")
        follow = subprocess.Popen([*SMBYOC, "logs", "logs-ctrl-c", "-f"], cwd=workdir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert follow.poll() is None  # still following: the job runs
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
        assert follow.returncode == 130
        assert "Traceback" not in err
        assert "[algo-1] step 4" in out
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)


@pytest.fixture
def server(workdir: Path) -> Iterator[ApiServer]:
    api = ApiServer(ApiConfig(mode="process", port=0, state_dir=workdir / "api-state", stop_timeout=5))
    api.start()
    yield api
    api.close()


def test_a_job_of_the_api_whole_and_follow(server: ApiServer, workdir: Path) -> None:
    sm, _ = clients(server.url)
    request = training_request("api-logs", workdir / "out", source_dir=workdir / "src")
    request["HyperParameters"] = {**request["HyperParameters"], "pause": "3"}
    sm.create_training_job(**request)
    state = str(workdir / "api-state")
    wait_for(workdir / "api-state" / "logs" / "training-job-api-logs.log", "step 4")
    follow = smbyoc("logs", "api-logs", "--state-dir", state, "--follow", cwd=workdir, timeout=60)
    assert follow.returncode == 0, follow.stderr
    assert "[algo-1] step 0" in follow.stdout.splitlines() and "[algo-1] finished" in follow.stdout.splitlines()
    assert sm.describe_training_job(TrainingJobName="api-logs")["TrainingJobStatus"] == "Completed"
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName="api-logs", WaiterConfig=FAST)

    tail = smbyoc("logs", "api-logs", "--state-dir", state, "--tail", "2", "--kind", "training", cwd=workdir)
    assert tail.returncode == 0 and tail.stdout.splitlines() == follow.stdout.splitlines()[-2:]
    # The default state dir (<SMBYOC_STATE_DIR>/api) is not this server's: not found there.
    elsewhere = smbyoc("logs", "api-logs", cwd=workdir)
    assert elsewhere.returncode == 1 and "api-logs" in elsewhere.stderr
