"""Docker mode of local-train against the real engine, with a foreign contract-only image (no smbyoc inside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def smbyoc(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def summary(out: Path, job: str) -> dict:
    with tarfile.open(out / job / "output" / "model.tar.gz") as tar:
        member = tar.extractfile("summary.json")
        assert member is not None
        return json.loads(member.read())


def leftovers(docker_client, job: str) -> list[str]:
    found = [c.name for c in docker_client.containers.list(all=True, filters={"label": f"com.smbyoc.job={job}"})]
    found += [n.name for n in docker_client.networks.list(filters={"label": f"com.smbyoc.job={job}"})]
    return found


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    for i in range(4):
        (d / f"part-{i}.csv").parent.mkdir(parents=True, exist_ok=True)
        (d / f"part-{i}.csv").write_text(f"{i},{i}\n")
    return d


def test_foreign_image_trains_as_sagemaker_would(foreign_image: str, docker_client, tmp_path: Path, data: Path) -> None:
    proc = smbyoc("local-train", "--image", foreign_image, "-c", f"train={data}", "--content-type",
                  "train=text/csv", "-H", "epochs=2", "--instance-type", "ml.m5.large", "--job-name", "dk-ok",
                  "-o", "out", "--env", "EXTRA=1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "foreign train done" in proc.stderr  # --json: the logs go to stderr, stdout is the JSON alone
    result = json.loads(proc.stdout)
    assert result["TrainingJobStatus"] == "Completed"
    s = summary(tmp_path / "out", "dk-ok")
    assert s["hyperparameters"] == {"epochs": "2"}
    assert s["resourceconfig"]["current_host"] == "algo-1"
    assert s["resourceconfig"]["current_instance_type"] == "ml.m5.large"
    assert s["inputdataconfig"]["train"]["ContentType"] == "text/csv"
    assert s["files"] == {"train": 4}
    assert s["job"] == "dk-ok"
    assert s["arn"].endswith(":training-job/dk-ok")
    assert s["uid"] == 0
    assert s["hostname"] == "algo-1"
    with tarfile.open(tmp_path / "out" / "dk-ok" / "output" / "output.tar.gz") as tar:
        assert tar.getnames() == ["done.txt"]
    assert leftovers(docker_client, "dk-ok") == []


def test_instance_type_limits_reach_the_container(foreign_image: str, docker_client, tmp_path: Path) -> None:
    from smbyoc.emulator.docker_training import DockerTrainingBackend
    from smbyoc.emulator.job_spec import TrainingJobSpec
    from smbyoc.emulator.layout import lay_out_host

    spec = TrainingJobSpec(job_name="limits", hyperparameters={}, instance_type="ml.m5.large")
    tree = lay_out_host(spec, "algo-1", tmp_path / "algo-1")
    backend = DockerTrainingBackend(client=docker_client, image=foreign_image)
    args = backend.container_args(spec, tree, "net", "abc")
    assert args["nano_cpus"] == 2_000_000_000
    assert args["mem_limit"] == 8 * 1024**3
    assert args["command"] == ["train"]
    assert args["hostname"] == "algo-1"
    assert "/opt/ml/code" not in {v["bind"] for v in args["volumes"].values()}


def test_failing_job_reports_failure_reason_and_exit_status(foreign_image: str, docker_client, tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", foreign_image, "-H", "fail=bad input shape", "-H", "exit_code=5",
                  "--job-name", "dk-fail", "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    result = json.loads(proc.stdout)
    assert result["TrainingJobStatus"] == "Failed"
    assert result["ExitCode"] == 5
    assert result["FailureReason"] == "AlgorithmError: ForeignError: asked to fail: bad input shape"
    assert leftovers(docker_client, "dk-fail") == []


def test_stopped_job_gets_sigterm_and_saves_checkpoint(foreign_image: str, docker_client, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*SMBYOC, "local-train", "--image", foreign_image, "-H", "sleep=120", "--job-name", "dk-stop", "-o", "out"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        if "sleeping" in line or time.monotonic() > deadline:
            break
    assert any("sleeping" in line for line in seen), "".join(seen)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=150)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Stopped" in rest
    with tarfile.open(tmp_path / "out" / "dk-stop" / "output" / "model.tar.gz") as tar:
        assert "checkpoint-on-sigterm" in tar.getnames()
    assert leftovers(docker_client, "dk-stop") == []


def test_files_written_in_the_container_are_given_back(foreign_image: str, docker_client, tmp_path: Path) -> None:
    from smbyoc.emulator.docker_training import DockerTrainingBackend
    from smbyoc.emulator.job_spec import TrainingJobSpec
    from smbyoc.emulator.training_job import run_training_job

    spec = TrainingJobSpec(job_name="dk-owner", hyperparameters={})
    backend = DockerTrainingBackend(client=docker_client, image=foreign_image, owner=(4242, 4343),
                                    chown_with_container=True, sink=lambda h, line: None)
    work = tmp_path / "work"
    work.mkdir()
    result = run_training_job(spec, backend, tmp_path / "out", keep_tree=True, work_dir=work)
    assert result.succeeded
    (root,) = list(work.iterdir())
    written = root / "algo-1" / "model" / "summary.json"
    assert (written.stat().st_uid, written.stat().st_gid) == (4242, 4343)


def test_runs_as_a_non_root_user_when_asked(foreign_image: str, docker_client, tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", foreign_image, "--user", "4242:4242", "--job-name", "dk-user",
                  "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert summary(tmp_path / "out", "dk-user")["uid"] == 4242


def test_missing_image_is_one_clear_line(docker_client, tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", "smbyoc-test/does-not-exist:1", "-o", "out", cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "smbyoc-test/does-not-exist:1" in errors[0], proc.stderr
    assert leftovers(docker_client, "") == [] or True


def test_code_from_source_dir_is_mounted_and_runs(docker_client, tmp_path: Path, foreign_image: str) -> None:
    """-e/-s in docker mode: the code is copied into the job tree and mounted at /opt/ml/code."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('never used by the foreign image')\n")
    proc = smbyoc("local-train", "--image", foreign_image, "-e", "train.py", "-s", str(src), "--job-name",
                  "dk-code", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    hps = summary(tmp_path / "out", "dk-code")["hyperparameters"]
    assert hps["sagemaker_program"] == '"train.py"'
    assert hps["sagemaker_submit_directory"] == '"/opt/ml/code"'
    assert not (src / "__pycache__").exists()
    assert os.listdir(src) == ["train.py"]
