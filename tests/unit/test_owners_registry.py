"""Owners (PID + start time), the job registry, and the sweep, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smbyoc.emulator import jobs, owners, sweep
from smbyoc.emulator.owners import Owner
from smbyoc.errors import ConfigError

#: A child that ignores SIGTERM, carries a token, and says when it is ready.
STUBBORN = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(120)
""")


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def start(code: str, token: str = "", **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, owners.TOKEN_VARIABLE: token} if token else None
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, **kw)  # type: ignore[call-overload]
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def gone(pid: int) -> bool:
    return owners.start_time(pid) is None


def test_a_live_owner_is_alive_and_a_dead_one_is_not() -> None:
    proc = start(STUBBORN)
    owner = Owner.of(proc.pid)
    assert owner.start is not None and owner.alive()
    proc.kill()
    proc.wait()
    assert not owner.alive()


def test_a_recycled_pid_is_not_mistaken_for_the_owner() -> None:
    me = Owner.current()
    assert me.alive()
    recycled = Owner(me.pid, (me.start or 0) + 1, me.host, me.boot)  # same PID, another process
    assert not recycled.alive()
    assert not Owner(me.pid, me.start, me.host, "another-boot").alive()
    assert Owner(me.pid, (me.start or 0) + 1, "another-host", me.boot).alive()  # not ours to judge


def test_owner_labels_round_trip() -> None:
    me = Owner.current()
    assert Owner.from_labels(me.labels()) == me
    assert Owner.from_labels({"com.smbyoc.owner": "smbyoc"}) is None


def test_tagged_processes_are_found_and_ended_sigkill_after_the_grace() -> None:
    token = owners.new_token()
    procs = [start(STUBBORN, token), start(STUBBORN, token, start_new_session=True)]
    other = start(STUBBORN, owners.new_token())
    try:
        assert owners.tagged_processes(token) == sorted(p.pid for p in procs)
        ended = owners.end_processes(token, grace=0.2)
        assert ended == sorted(p.pid for p in procs)
        for p in procs:
            assert p.wait(10) == -signal.SIGKILL  # SIGTERM is ignored: SIGKILL after the grace
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_process_tree_lists_a_process_and_its_descendants_only() -> None:
    # a child that starts a grandchild (in a session of its own, as nginx and gunicorn do) and prints its PID
    code = ("import subprocess, sys, time; "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
            "print(g.pid, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    grandchild = 0
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert owners.process_tree(child.pid) == [child.pid, grandchild]
        mine = owners.process_tree(os.getpid())
        assert mine[0] == os.getpid() and {child.pid, grandchild, other.pid} <= set(mine)
        assert owners.process_tree(grandchild) == [grandchild]
    finally:
        for process in (child, other):
            process.kill()
            process.wait()
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)


def test_a_token_on_the_command_line_tags_the_process_and_its_children() -> None:
    """nginx writes its process title over its environment: the token on its command line finds it, and its
    workers (which carry no token of their own) with it."""
    token = owners.new_token()
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env={}); "
            "print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, f"-g env {owners.TOKEN_VARIABLE}={token};"],
                              env={k: v for k, v in os.environ.items() if k != owners.TOKEN_VARIABLE},
                              stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert owners.tagged_processes(token) == sorted([parent.pid, child])
        assert owners.tagged_processes(owners.new_token()) == []
    finally:
        parent.kill()
        parent.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_records_of_a_killed_owner_are_orphaned_and_swept(tmp_path: Path, state: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "model").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    partial = out / ".model.tar.gz.abc123.partial"
    partial.write_bytes(b"half")
    finished = out / "model.tar.gz"
    finished.write_bytes(b"whole")
    token = owners.new_token()
    worker = start(STUBBORN, token, start_new_session=True)
    # A real owner process registers the job and names its tree, output dir, token and child, then dies.
    owner_code = textwrap.dedent(f"""
        from smbyoc.emulator import jobs, owners
        jobs.register(jobs.TRAINING, "orphan-job", mode="process", tree={str(tree)!r}, output_dir={str(out)!r},
                      token={token!r}, child=owners.Owner.of({worker.pid}).to_dict())
        print("ready", flush=True)
        import time; time.sleep(120)
    """)
    owner = start(owner_code)
    [record] = jobs.records()
    assert (record.name, record.state, record.mode) == ("orphan-job", "running", "process")
    assert jobs.running_jobs() == {"orphan-job": owner.pid}
    owner.kill()
    owner.wait()
    [record] = jobs.records()
    assert record.state == "orphaned"
    assert jobs.running_jobs() == {}
    removed = sweep.sweep_orphans()
    assert len(removed) == 1 and removed[0].startswith("training orphan-job ("), removed
    assert worker.wait(30) == -signal.SIGKILL
    assert not tree.exists() and not partial.exists() and finished.exists()
    assert jobs.records() == []
    assert "orphan-job" in sweep.summary(removed)


def test_stop_of_an_unknown_job_names_the_running_ones() -> None:
    with jobs.registered("alive-job", "process"), \
            pytest.raises(ConfigError, match=r"job 'nope': no running job of that name \(running: alive-job\)"):
        jobs.stop_job("nope")
    assert jobs.records() == []


def test_update_touches_only_our_own_record(state: Path) -> None:
    with jobs.registered("mine", "process") as record:
        jobs.update(jobs.TRAINING, "mine", tree="/x")
        data = json.loads(record.path.read_text())
        assert data["tree"] == "/x" and data["owner"]["pid"] == os.getpid()
        data["owner"]["pid"] = data["pid"] = 1
        record.path.write_text(json.dumps(data))
        jobs.update(jobs.TRAINING, "mine", tree="/y")
        assert json.loads(record.path.read_text())["tree"] == "/x"
    assert record.path.exists()  # not ours any more: left for its owner


def test_a_record_written_before_owners_is_judged_by_its_pid(state: Path) -> None:
    proc = start(STUBBORN)
    folder = state / "jobs"
    folder.mkdir(parents=True)
    (folder / "old.json").write_text(json.dumps({"job_name": "old", "pid": proc.pid, "mode": "process"}))
    assert jobs.running_jobs() == {"old": proc.pid}
    proc.kill()
    proc.wait()
    assert jobs.running_jobs() == {} and [r.state for r in jobs.records()] == ["orphaned"]
    assert sweep.sweep_orphans() == ["training old"] and jobs.records() == []
