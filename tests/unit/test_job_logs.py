"""Job log files (:mod:`smbyoc.emulator.job_logs`): writing, rotation and bounds, finding a name, tail and follow,
and the `smbyoc logs` command's one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.emulator import job_logs
from smbyoc.errors import ConfigError


def write_log(root: Path, kind: str, name: str, text: str) -> Path:
    path = job_logs.log_path(root, kind, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_log_file_prefixes_hosts_rotates_a_reused_name_and_stops_at_its_bound(tmp_path: Path) -> None:
    first = job_logs.LogFile.for_job(tmp_path, job_logs.TRAINING, "job").start()
    first.host_sink("algo-1", "hello")
    first.host_sink("algo-2", "world\n")
    first.close()
    path = tmp_path / "logs" / "training-job-job.log"
    assert path.read_text() == "[algo-1] hello\n[algo-2] world\n"

    second = job_logs.LogFile(path, max_bytes=30).start()
    second.write("0123456789")
    second.write("0123456789")
    second.write("never written")
    second.write("nor this")
    second.close()
    assert (tmp_path / "logs" / "training-job-job.log.1").read_text() == "[algo-1] hello\n[algo-2] world\n"
    lines = path.read_text().splitlines()
    assert lines[:2] == ["0123456789", "0123456789"] and lines[2].startswith("[smbyoc] log truncated at 30 bytes")
    assert len(lines) == 3


def test_a_logs_folder_keeps_the_newest_files(tmp_path: Path) -> None:
    for i in range(5):
        old = write_log(tmp_path, job_logs.TRAINING, f"old-{i}", "x\n")
        os.utime(old, (1000 + i, 1000 + i))
    job_logs.LogFile(job_logs.log_path(tmp_path, job_logs.TRAINING, "new"), keep_files=3).start().close()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "training-job-new.log", "training-job-old-3.log", "training-job-old-4.log"]


def test_a_log_that_cannot_be_written_never_fails_the_job(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = job_logs.LogFile(blocker / "logs" / "x.log").start()
    log.host_sink("algo-1", "lost")  # no exception
    log.close()


def test_find_logs_by_kind_and_source(tmp_path: Path) -> None:
    api, local = tmp_path / "api", tmp_path / "local"
    write_log(local, job_logs.TRAINING, "job", "[algo-1] local\n")
    found = job_logs.find_logs("job", api_dir=api, local_dir=local)
    assert (found.kind, found.source, found.running()) == ("training", "local", False)

    write_log(api, job_logs.ENDPOINT, "job", "endpoint line\n")
    with pytest.raises(ConfigError, match=r"several kinds share that name \(endpoint, training\); pick one with "
                                          r"--kind"):
        job_logs.find_logs("job", api_dir=api, local_dir=local)
    endpoint = job_logs.find_logs("job", api_dir=api, local_dir=local, kind="endpoint")
    assert endpoint.source == "api" and not endpoint.running()  # no description: deleted
    (api / "endpoints").mkdir()
    (api / "endpoints" / "job.json").write_text(json.dumps({"EndpointStatus": "InService"}))
    assert endpoint.running()

    newer = write_log(api, job_logs.TRAINING, "job", "[algo-1] api\n")
    os.utime(newer, (2_000_000_000, 2_000_000_000))
    picked = job_logs.find_logs("job", api_dir=api, local_dir=local, kind="training")
    assert picked.source == "api"  # the newer log of the two training jobs of that name
    (api / "training-jobs").mkdir()
    (api / "training-jobs" / "job.json").write_text(json.dumps({"TrainingJobStatus": "Stopping"}))
    assert picked.running()
    (api / "training-jobs" / "job.json").write_text(json.dumps({"TrainingJobStatus": "Completed"}))
    assert not picked.running()

    with pytest.raises(ConfigError, match=r"^logs 'other': no log of a transform job of that name \(looked in "):
        job_logs.find_logs("other", api_dir=api, local_dir=local, kind="transform")


def test_tail_leaves_a_line_being_written_to_follow(tmp_path: Path) -> None:
    path = write_log(tmp_path, job_logs.TRAINING, "j", "a\nb\nc\npart")
    assert job_logs.tail_lines(path, None) == (["a", "b", "c"], 6)
    assert job_logs.tail_lines(path, 2) == (["b", "c"], 6)
    assert job_logs.tail_lines(path, 0) == ([], 6)

    states = iter([True, True, False])
    printed: list[str] = []

    def sleep(_: float) -> None:
        with path.open("a") as f:
            f.write("ial\nmore\nlast")

    found = job_logs.Found("training", "j", "local", path, running=lambda: next(states))
    job_logs.follow(found, 6, printed.append, sleep=sleep)
    # first pass: "part" stays pending; after each sleep more lands; the job ends: what is left, then stop
    assert printed == ["partial", "more", "lastial", "more", "last"]


def test_the_logs_command_says_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    _register()
    runner = CliRunner()
    missing = runner.invoke(cli, ["logs", "nothing"])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: logs 'nothing': no log of a job or endpoint of that name (looked in {tmp_path / 'state' / 'logs'} "
        f"and {tmp_path / 'state' / 'api' / 'logs'})"]

    write_log(tmp_path / "state", job_logs.TRANSFORM, "both", "[algo-1] t\n")
    write_log(tmp_path / "other", job_logs.TRAINING, "both", "[algo-1] a\n[algo-1] b\n")
    ambiguous = runner.invoke(cli, ["logs", "both", "--state-dir", str(tmp_path / "other")])
    assert ambiguous.exit_code == 1 and len(ambiguous.output.strip().splitlines()) == 1
    assert "--kind" in ambiguous.output
    picked = runner.invoke(cli, ["logs", "both", "--state-dir", str(tmp_path / "other"), "--kind", "training",
                                 "-n", "1"])
    assert picked.exit_code == 0 and picked.output == "[algo-1] b\n"
    assert runner.invoke(cli, ["logs", "both", "--tail", "-1"]).exit_code == 2
