"""`smbyoc local-process` in Docker: a processing image written against the contract alone
(tests/docker/processing_image), real containers, real files.

Each job's containers report what they saw (argv, environment, config files, their share of the inputs,
network interfaces) into an output, which the emulator copies out: the tests read those reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator.processing_job import run_local_processing
from smbyoc.emulator.processing_request import RequestOverrides, merge_request
from smbyoc.emulator.processing_result import ProcessingJobResult

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
IMAGE_DIR = Path(__file__).parent / "processing_image"
BASE_IMAGE = "smbyoc/base:bookworm"
REPORT = "/opt/ml/processing/output/report"


@pytest.fixture(scope="module")
def image(docker_client: Any) -> Iterator[str]:
    tag = f"smbyoc-test/processing:{uuid.uuid4().hex[:8]}"
    built, _ = docker_client.images.build(path=str(IMAGE_DIR), tag=tag, buildargs={"BASE_IMAGE": BASE_IMAGE},
                                          rm=True, labels={"com.smbyoc.test": "1"})
    yield tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(built.id, force=True)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))


def job_containers(client: Any, job: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"com.smbyoc.job={job}"})]


def data(tmp_path: Path, count: int = 5) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        (folder / f"part-{i}.csv").write_text(f"{i}\n")
    (folder / "sub" / "z.csv").write_text("z\n")
    return folder


def run(tmp_path: Path, image: str, *, name: str, inputs: tuple[tuple[str, str, str | None], ...] = (),
        **flags: Any) -> ProcessingJobResult:
    overrides = RequestOverrides(image=image, job_name=name, inputs=inputs,
                                 outputs=[("report", REPORT, str(tmp_path / "out"))], **flags)
    return run_local_processing(merge_request(None, overrides, default_name=name), sink=lambda host, line: None,
                                work_dir=tmp_path)


def reports(tmp_path: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))}


def test_inputs_outputs_config_files_entrypoint_and_arguments(tmp_path: Path, image: str, docker_client: Any) -> None:
    folder = data(tmp_path)
    (tmp_path / "single.txt").write_text("one file")
    result = run(tmp_path, image, name="proc-files",
                 inputs=(("data", str(folder), "/opt/ml/processing/input/data"),
                         ("one", f"file://{tmp_path / 'single.txt'}", "/opt/ml/processing/one")),
                 entrypoint=["python3", "/code/process.py"], arguments=["--alpha", "1"],
                 environment={"JOB_COLOUR": "blue"}, instance_type="ml.m5.large")
    assert result.status == "Completed" and result.exit_code == 0 and result.exit_message is None
    report = reports(tmp_path)["algo-1"]
    assert report["argv"] == ["/code/process.py", "--alpha", "1"]
    assert report["env"] == {"JOB_COLOUR": "blue"}
    assert report["inputs"] == {"data": ["part-0.csv", "part-1.csv", "part-2.csv", "part-3.csv", "part-4.csv",
                                         "sub/z.csv"], "one": ["single.txt"]}
    assert report["outputs_exist"] == [True] and "eth0" in report["interfaces"]
    config = report["config"]
    assert config["ProcessingJobArn"] == "arn:aws:sagemaker:us-east-1:000000000000:processing-job/proc-files"
    assert config["AppSpecification"] == {"ImageUri": image, "ContainerEntrypoint": ["python3", "/code/process.py"],
                                          "ContainerArguments": ["--alpha", "1"]}
    assert config["ProcessingInputs"][0]["S3Input"]["S3Uri"] == folder.as_uri()
    assert config["ProcessingInputs"][0]["S3Input"]["S3DownloadMode"] == "StartOfJob"
    assert config["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.large"
    assert report["resource"]["current_host"] == "algo-1" and report["resource"]["hosts"] == ["algo-1"]
    described = result.describe()
    assert described["ProcessingJobStatus"] == "Completed"
    assert described["ProcessingInputs"][1]["S3Input"]["S3Uri"] == f"file://{tmp_path / 'single.txt'}"
    assert not job_containers(docker_client, "proc-files")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("smbyoc-")]  # the job tree is gone


def test_two_instances_shard_by_key_and_both_write_outputs(tmp_path: Path, image: str) -> None:
    folder = data(tmp_path)
    result = run(tmp_path, image, name="proc-sharded", inputs=(("data", str(folder), None),), instance_count=2,
                 arguments=["only-args"], settings=[("S3DataDistributionType", "data", "ShardedByS3Key")])
    assert result.status == "Completed", result.failure_reason
    seen = reports(tmp_path)
    assert sorted(seen) == ["algo-1", "algo-2"]
    # sorted keys: part-0..part-4, sub/z: algo-1 gets the 1st, 3rd, 5th; algo-2 the others
    assert seen["algo-1"]["inputs"]["data"] == ["part-0.csv", "part-2.csv", "part-4.csv"]
    assert seen["algo-2"]["inputs"]["data"] == ["part-1.csv", "part-3.csv", "sub/z.csv"]
    for host, report in seen.items():
        assert report["argv"] == ["/code/process.py", "only-args"]  # the image's ENTRYPOINT, then the arguments
        assert report["resource"]["current_host"] == host
        assert report["resource"]["hosts"] == ["algo-1", "algo-2"]


def test_a_failing_job_is_failed_with_its_message_and_exit_status(tmp_path: Path, image: str,
                                                                  docker_client: Any) -> None:
    result = run(tmp_path, image, name="proc-fails", entrypoint=["python3", "/code/process.py", "fail"])
    assert result.status == "Failed" and result.exit_code == 3
    assert result.failure_reason == "AlgorithmError: See job logs for more information (algo-1 exited with status 3)"
    assert result.exit_message == "bad row on algo-1"
    assert reports(tmp_path)["algo-1"]["argv"] == ["/code/process.py", "fail"]  # the image's CMD is not added
    described = result.describe()
    assert described["ExitMessage"] == "bad row on algo-1" and described["ProcessingJobStatus"] == "Failed"
    assert not job_containers(docker_client, "proc-fails")


def test_network_isolation_and_the_image_entrypoint_and_cmd(tmp_path: Path, image: str) -> None:
    result = run(tmp_path, image, name="proc-isolated", network_isolation=True)
    assert result.status == "Completed"
    report = reports(tmp_path)["algo-1"]
    assert report["interfaces"] == ["lo"]
    assert report["argv"] == ["/code/process.py", "from-cmd"]
    assert report["config"]["NetworkConfig"]["EnableNetworkIsolation"] is True


def test_max_runtime_stops_the_job(tmp_path: Path, image: str, docker_client: Any) -> None:
    began = time.monotonic()
    result = run(tmp_path, image, name="proc-slow", arguments=["sleep=60"], max_runtime_seconds=1)
    assert time.monotonic() - began < 30  # SIGINT ends the sleeping program at once
    assert result.status == "Stopped" and result.exit_code == 1
    assert result.failure_reason is not None and result.failure_reason.startswith("MaxRuntimeExceeded")
    assert result.hosts[0].exit_code != 0
    assert "algo-1.json" in os.listdir(tmp_path / "out")  # outputs are copied out whatever the status
    assert not job_containers(docker_client, "proc-slow")


def test_continuous_outputs_are_copied_while_the_job_runs(tmp_path: Path, image: str) -> None:
    stream = tmp_path / "stream"
    overrides = RequestOverrides(image=image, job_name="proc-continuous", arguments=["trickle=4"],
                                 outputs=[("stream", "/opt/ml/processing/output/stream", str(stream))],
                                 settings=[("S3UploadMode", "stream", "Continuous")])
    request = merge_request(None, overrides, default_name="x")
    done: list[ProcessingJobResult] = []
    worker = threading.Thread(target=lambda: done.append(run_local_processing(
        request, sink=lambda host, line: None, work_dir=tmp_path, continuous_interval=0.2)))
    worker.start()
    deadline = time.monotonic() + 60
    while not (stream / "part-1.txt").exists() and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert (stream / "part-1.txt").read_text() == "first"
    assert worker.is_alive() and not (stream / "part-2.txt").exists()  # copied while the job still runs
    worker.join(120)
    assert done and done[0].status == "Completed"
    assert (stream / "part-2.txt").read_text() == "second"
    assert not list(stream.rglob("*.partial"))


def test_ctrl_c_stops_the_cli_job_and_leaves_nothing(tmp_path: Path, image: str, docker_client: Any) -> None:
    (tmp_path / "tmp").mkdir()
    request = tmp_path / "job.json"
    request.write_text(json.dumps({
        "ProcessingJobName": "proc-ctrl-c", "RoleArn": "arn:aws:iam::123456789012:role/R",
        "AppSpecification": {"ImageUri": image, "ContainerArguments": ["sleep=60"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.large",
                                                  "VolumeSizeInGB": 5}},
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "report", "S3Output": {
            "S3Uri": "out", "LocalPath": REPORT, "S3UploadMode": "EndOfJob"}}]}}))
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([*SMBYOC, "local-process", "--request", str(request), "--json", "--stop-timeout", "5"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both programs have reported and sleep
        assert proc.poll() is None, proc.communicate()
        running = docker_client.containers.list(filters={"label": "com.smbyoc.job=proc-ctrl-c"})
        if len(running) == 2 and all(b"sees" in c.logs() for c in running):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    described = json.loads(out)
    assert described["ProcessingJobStatus"] == "Stopped"
    # a relative path of a request file is read from its folder
    assert described["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == str(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["algo-1.json", "algo-2.json"]
    assert not job_containers(docker_client, "proc-ctrl-c")
    assert not docker_client.networks.list(filters={"label": "com.smbyoc.job=proc-ctrl-c"})
    assert not list((tmp_path / "tmp").iterdir())
    assert not list((tmp_path / "state").rglob("*.json"))
    log_text = (tmp_path / "state" / "logs" / "processing-job-proc-ctrl-c.log").read_text()  # for `smbyoc logs`
    assert "[algo-1] " in log_text and "[algo-2] " in log_text


def test_s3_inputs_and_outputs_through_the_cli(aws_env: str, tmp_path: Path, image: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("SMBYOC_CACHE_DIR", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="smbyoc-processing")
    for key in ("raw/a.csv", "raw/b.csv", "raw/deep/c.csv"):
        s3.put_object(Bucket="smbyoc-processing", Key=key, Body=key.encode())
    proc = subprocess.run(
        [*SMBYOC, "local-process", "--image", image, "--job-name", "proc-s3", "--instance-count", "2",
         "-i", "raw=s3://smbyoc-processing/raw/:/opt/ml/processing/input/raw", "--distribution", "ShardedByS3Key",
         "-o", f"report={REPORT}:s3://smbyoc-processing/reports/", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    assert described["ProcessingJobStatus"] == "Completed"
    assert described["ProcessingInputs"][0]["S3Input"]["S3Uri"] == "s3://smbyoc-processing/raw/"
    seen = {key: json.loads(s3.get_object(Bucket="smbyoc-processing", Key=f"reports/{key}.json")["Body"].read())
            for key in ("algo-1", "algo-2")}
    assert seen["algo-1"]["inputs"]["raw"] == ["a.csv", "deep/c.csv"]
    assert seen["algo-2"]["inputs"]["raw"] == ["b.csv"]
    assert seen["algo-1"]["config"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] == "s3://smbyoc-processing/raw/"


def test_a_killed_emulator_leaves_nothing_after_stop_all(tmp_path: Path, image: str, docker_client: Any) -> None:
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([*SMBYOC, "local-process", "--image", image, "--job-name", "proc-orphan", "-a", "sleep=60",
                             "-o", f"report={REPORT}:out"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not docker_client.containers.list(filters={"label": "com.smbyoc.job=proc-orphan"}):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / ".algo-1.json.123.partial").write_text("half")  # as a copy cut short by the kill
    proc.kill()
    proc.wait(30)
    listed = subprocess.run([*SMBYOC, "ps", "--json"], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=60)
    assert [r["State"] for r in json.loads(listed.stdout)["ProcessingJobs"]] == ["orphaned"]
    stopped = subprocess.run([*SMBYOC, "stop", "--all"], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "processing proc-orphan" in stopped.stderr
    assert not job_containers(docker_client, "proc-orphan")
    assert not docker_client.networks.list(filters={"label": "com.smbyoc.job=proc-orphan"})
    assert not list((tmp_path / "tmp").iterdir()) and not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------------------ Pipe input mode


def test_pipe_mode_streams_plain_and_gzip_inputs_through_fifos(tmp_path: Path, image: str,
                                                              docker_client: Any) -> None:
    import gzip

    folder = data(tmp_path)
    packed = tmp_path / "gz"
    packed.mkdir()
    (packed / "a.csv.gz").write_bytes(gzip.compress(b"alpha\n"))
    (packed / "b.csv.gz").write_bytes(gzip.compress(b"beta\n" * 1000))
    result = run(tmp_path, image, name="proc-pipe",
                 inputs=(("data", str(folder), None), ("gz", str(packed), "/opt/ml/processing/gz")),
                 arguments=["pipe=data:/opt/ml/processing/input/data_0", "pipe=gz:/opt/ml/processing/gz_0"],
                 settings=[("S3InputMode", None, "Pipe"), ("S3CompressionType", "gz", "Gzip")])
    assert result.status == "Completed", result.failure_reason
    report = reports(tmp_path)["algo-1"]
    # every object, in key order, through <LocalPath>_0; the Gzip input decompressed; nothing on the volume
    assert report["pipes"]["data"] == {"is_fifo": True, "data": "0\n1\n2\n3\n4\nz\n"}
    assert report["pipes"]["gz"] == {"is_fifo": True, "data": "alpha\n" + "beta\n" * 1000}
    assert report["inputs"] == {"data": [], "gz": []}
    s3 = [item["S3Input"] for item in report["config"]["ProcessingInputs"]]
    assert [(i["S3InputMode"], i["S3CompressionType"]) for i in s3] == [("Pipe", "None"), ("Pipe", "Gzip")]
    assert not job_containers(docker_client, "proc-pipe")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("smbyoc-")]


def test_pipe_mode_two_instances_sharded_at_a_configured_path_through_the_cli(tmp_path: Path, image: str,
                                                                              docker_client: Any) -> None:
    folder = data(tmp_path)
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state"),
           "SMBYOC_PROCESSING_PIPE_PATH": "/opt/ml/processing/pipes/{input_name}.{epoch}"}
    proc = subprocess.run(
        [*SMBYOC, "local-process", "--image", image, "--job-name", "proc-pipe-sharded", "--instance-count", "2",
         "-i", f"data={folder}", "--input-mode", "Pipe", "--distribution", "data=ShardedByS3Key",
         "-o", f"report={REPORT}:out", "-a", "pipe=data:/opt/ml/processing/pipes/data.0", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ProcessingJobStatus"] == "Completed"
    seen = {p.stem: json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))}
    # each instance's pipe carries its share: every 2nd object of the sorted keys
    assert seen["algo-1"]["pipes"]["data"] == {"is_fifo": True, "data": "0\n2\n4\n"}
    assert seen["algo-2"]["pipes"]["data"] == {"is_fifo": True, "data": "1\n3\nz\n"}
    assert not job_containers(docker_client, "proc-pipe-sharded")


def test_a_gzip_pipe_input_that_is_not_gzip_fails_the_job(tmp_path: Path, image: str, docker_client: Any) -> None:
    packed = tmp_path / "gz"
    packed.mkdir()
    (packed / "a.csv.gz").write_bytes(b"plain text, not gzip\n")
    result = run(tmp_path, image, name="proc-pipe-bad", inputs=(("gz", str(packed), None),),
                 arguments=["pipe=gz:/opt/ml/processing/input/gz_0"],
                 settings=[("S3InputMode", None, "Pipe"), ("S3CompressionType", None, "Gzip")])
    assert result.status == "Failed" and result.exit_code != 0
    assert result.failure_reason is not None
    assert result.failure_reason.startswith("ClientError: Pipe-mode input gz on algo-1 could not be streamed")
    assert reports(tmp_path)["algo-1"]["pipes"]["gz"] == {"is_fifo": True, "data": ""}  # the pipe ended early
    assert not job_containers(docker_client, "proc-pipe-bad")
