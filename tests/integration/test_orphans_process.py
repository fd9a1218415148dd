"""Nothing outlives a process-mode job: leftover processes at job end, and what a killed `smbyoc` leaves.

Real `smbyoc local-train --mode process` runs, real programs, real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smbyoc.emulator.owners import start_time

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]

#: The program starts a grandchild that ignores SIGTERM (in its process group, or in a session of its
#: own with `escape`), waits until the grandchild wrote its pid, then ends as SM_HP_OUTCOME says.
PROGRAM = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from pathlib import Path
    pids = Path(os.environ["SM_HP_PIDS"])
    grandchild = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
                  "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(300)")
    subprocess.Popen([sys.executable, "-c", grandchild, str(pids / "grandchild.pid")],
                     start_new_session=os.environ.get("SM_HP_ESCAPE") == "yes")
    while not (pids / "grandchild.pid").exists():
        time.sleep(0.01)
    (pids / "program.pid").write_text(str(os.getpid()))
    outcome = os.environ["SM_HP_OUTCOME"]
    if outcome == "completed":
        sys.exit(0)
    if outcome == "failed":
        sys.exit(3)
    if outcome == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if outcome == "big-model":
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "weights.bin"), "wb") as f:
            f.truncate(4 * 1024**3)  # sparse: instant to write, seconds to compress
        sys.exit(0)
    print("READY", flush=True)
    time.sleep(300)
""")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(PROGRAM)
    (tmp_path / "pids").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def environment(workdir: Path) -> dict[str, str]:
    return {**os.environ, "SMBYOC_STATE_DIR": str(workdir / "state"), "TMPDIR": str(workdir / "tmp")}


def train_args(workdir: Path, job: str, outcome: str, *extra: str) -> list[str]:
    return [*SMBYOC, "local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", job,
            "-o", "out", "-H", f"pids={workdir / 'pids'}", "-H", f"outcome={outcome}", *extra]


def pid_of(workdir: Path, name: str) -> int:
    return int((workdir / "pids" / f"{name}.pid").read_text())


def alive(pid: int) -> bool:
    return start_time(pid) is not None  # a zombie waiting for init counts as gone


def start_job(workdir: Path, job: str, outcome: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(train_args(workdir, job, outcome, *extra), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment(workdir))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "READY" in line:
            return proc
    proc.wait()
    raise AssertionError("the program never got ready:\n" + "".join(seen))


def smbyoc(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=workdir, capture_output=True, text=True, timeout=120,
                          env=environment(workdir))


@pytest.mark.parametrize(("outcome", "escape", "status"), [
    ("completed", "no", "Completed"),
    ("failed", "no", "Failed"),
    ("completed", "yes", "Completed"),  # the grandchild left the program's process group
])
def test_no_process_outlives_a_finished_job(workdir: Path, outcome: str, escape: str, status: str) -> None:
    proc = subprocess.run(train_args(workdir, f"left-{outcome}-{escape}", outcome, "-H", f"escape={escape}",
                                     "--json"), cwd=workdir, capture_output=True, text=True, timeout=120,
                          env=environment(workdir))
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["TrainingJobStatus"] == status, proc.stderr
    grandchild = pid_of(workdir, "grandchild")
    assert not alive(grandchild), f"grandchild {grandchild} outlived the {status} job"


@pytest.mark.parametrize("outcome", ["sigterm-exits", "stubborn"])
def test_no_process_outlives_a_stopped_job(workdir: Path, outcome: str) -> None:
    job = f"left-stopped-{outcome}"
    proc = start_job(workdir, job, outcome, "--stop-timeout", "1")
    stopped = smbyoc(workdir, "stop", job)
    assert stopped.returncode == 0, stopped.stderr
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    for name in ("grandchild", "program"):
        assert not alive(pid_of(workdir, name)), f"{name} outlived the stopped job"


def test_a_killed_local_train_is_orphaned_then_swept_by_stop_all(workdir: Path) -> None:
    proc = start_job(workdir, "killed-job", "sleep")
    proc.kill()  # SIGKILL: the emulator cannot clean up
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()  # the orphans hold its other end
    program, grandchild = pid_of(workdir, "program"), pid_of(workdir, "grandchild")
    assert alive(program) and alive(grandchild)
    [tree] = list((workdir / "tmp").iterdir())

    listed = smbyoc(workdir, "ps", "--json", "--no-docker")
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)["TrainingJobs"]
    assert (job["Name"], job["State"], job["Mode"], job["OwnerPid"]) == ("killed-job", "orphaned", "process",
                                                                         proc.pid)
    assert job["Tree"] == str(tree)
    text = smbyoc(workdir, "ps", "--no-docker")
    assert "killed-job" in text.stdout and "orphaned" in text.stdout

    swept = smbyoc(workdir, "stop", "--all")
    assert swept.returncode == 0, swept.stderr
    [line] = [line for line in swept.stderr.splitlines() if "removed" in line]
    assert "training killed-job" in line and str(tree) in line
    assert not alive(program) and not alive(grandchild)
    assert list((workdir / "tmp").iterdir()) == []
    assert json.loads(smbyoc(workdir, "ps", "--json", "--no-docker").stdout)["TrainingJobs"] == []


def test_the_next_local_train_removes_partial_archives_of_a_killed_run(workdir: Path) -> None:
    proc = subprocess.Popen(train_args(workdir, "killed-upload", "big-model"), cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(workdir))
    output = workdir / "out" / "killed-upload" / "output"
    deadline = time.monotonic() + 120
    while not list(output.glob(".model.tar.gz.*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline, "model.tar.gz was never being written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert list(output.glob(".*.partial")) and list((workdir / "tmp").iterdir())

    (workdir / "src" / "ok.py").write_text("print('ok')\n")
    nxt = subprocess.run([*SMBYOC, "local-train", "--mode", "process", "-e", "ok.py", "-s", "src", "-o", "out"],
                         cwd=workdir, capture_output=True, text=True, timeout=120, env=environment(workdir))
    assert nxt.returncode == 0, nxt.stderr
    lines = [line for line in nxt.stderr.splitlines() if line.startswith("smbyoc: removed")]
    assert len(lines) == 1 and "training killed-upload" in lines[0] and "partial file" in lines[0], nxt.stderr
    assert list(output.glob(".*.partial")) == []
    assert list((workdir / "tmp").iterdir()) == []


def test_a_killed_process_mode_endpoint_is_orphaned_then_swept(workdir: Path) -> None:
    from helpers import free_port, write_linear_onnx
    from smbyoc.emulator.owners import tagged_processes

    write_linear_onnx(workdir / "model" / "model.onnx")
    ready = workdir / "ready"
    proc = subprocess.Popen([*SMBYOC, "local-serve", "--mode", "process", "--model-data", "model", "--port",
                             str(free_port()), "--ready-file", str(ready)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(workdir))
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the endpoint never became ready"
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)

    [endpoint] = json.loads(smbyoc(workdir, "ps", "--json", "--no-docker").stdout)["Endpoints"]
    assert (endpoint["State"], endpoint["Mode"]) == ("orphaned", "process"), endpoint
    token = json.loads(Path(endpoint["Record"]).read_text())["token"]
    serving = tagged_processes(token)
    assert endpoint["ProcessPid"] in serving and len(serving) >= 2  # serve and gunicorn (own sessions)

    swept = smbyoc(workdir, "stop", "--all")
    assert swept.returncode == 0, swept.stderr
    assert f"endpoint {Path(endpoint['Tree']).name}" in swept.stderr
    assert tagged_processes(token) == [] and not any(alive(pid) for pid in serving)
    assert not Path(endpoint["Tree"]).exists()
