"""``local-train``, ``local-serve`` and ``local-transform`` (process mode) with ``s3://`` locations, against a real
S3 API (moto in server mode on loopback) reached by the real boto3 client through ``AWS_ENDPOINT_URL``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.examples import default_example
from transform_support import write_echo_model

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
DATA = "smbyoc-data"
JOBS = "smbyoc-jobs"

#: Writes what it was given into the model: the channel's files and rows, the checkpoints it found.
SEEING_PROGRAM = """
    import json, os
    from pathlib import Path
    base = Path(os.environ["SAGEMAKER_BASE_DIR"])
    train = Path(os.environ["SM_CHANNEL_TRAIN"])
    files = sorted(p.relative_to(train).as_posix() for p in train.rglob("*") if p.is_file())
    rows = sum(len((train / f).read_text().splitlines()) for f in files)
    checkpoints = base / "checkpoints"
    found = sorted(p.name for p in checkpoints.iterdir())
    (checkpoints / "epoch-2.txt").write_text("two")
    (checkpoints / "epoch-0.txt").unlink(missing_ok=True)
    Path(os.environ["SM_MODEL_DIR"], "seen.json").write_text(json.dumps(
        {"files": files, "rows": rows, "checkpoints": found, "code": sorted(os.listdir("."))}))
    Path(os.environ["SM_OUTPUT_DATA_DIR"], "note.txt").write_text("done")
"""


@pytest.fixture()
def s3(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    monkeypatch.setenv("SMBYOC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    if "/usr/sbin" not in os.environ.get("PATH", "").split(os.pathsep):
        monkeypatch.setenv("PATH", os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    client = boto3.client("s3")
    for bucket in (DATA, JOBS):
        client.create_bucket(Bucket=bucket)
    return client


def run(cwd: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def get(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ()))


def test_default_example_from_s3_to_s3_then_cache_then_new_etag(s3: Any, tmp_path: Path) -> None:
    example = default_example()
    for name, folder in example.channels.items():
        for file in folder.iterdir():
            s3.upload_file(str(file), DATA, f"example/{name}/{file.name}")
    channels = ["-c", f"train=s3://{DATA}/example/train/", "-c", f"validation=s3://{DATA}/example/validation/"]
    first = run(tmp_path, "local-train", "--mode", "process", *channels, "-o", f"s3://{JOBS}/runs",
                "--job-name", "s3-example", "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["TrainingJobStatus"] == "Completed"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{JOBS}/runs/s3-example/output/model.tar.gz"
    assert result["OutputDataConfig"]["S3OutputPath"] == f"s3://{JOBS}/runs"
    assert keys(s3, JOBS) == ["runs/s3-example/output/model.tar.gz", "runs/s3-example/output/output.tar.gz"]
    model = members(get(s3, JOBS, "runs/s3-example/output/model.tar.gz"))
    assert {"model.json", "code/inference.py"} <= set(model), sorted(model)
    members(get(s3, JOBS, "runs/s3-example/output/output.tar.gz"))  # a valid archive
    assert f"s3://{DATA}/example/train/: downloaded" in first.stderr
    assert not (tmp_path / "smbyoc-output").exists()  # nothing written locally

    source = tmp_path / "src"
    source.mkdir()
    (source / "see.py").write_text(textwrap.dedent(SEEING_PROGRAM))
    see = ["local-train", "--mode", "process", "-e", "see.py", "-s", str(source), "-c",
           f"train=s3://{DATA}/example/train/", "-o", f"s3://{JOBS}/runs"]
    second = run(tmp_path, *see, "--job-name", "s3-cached")
    assert second.returncode == 0, second.stderr
    assert f"s3://{DATA}/example/train/: cached (" in second.stderr
    assert "downloaded" not in second.stderr
    seen = json.loads(members(get(s3, JOBS, "runs/s3-cached/output/model.tar.gz"))["seen.json"])
    assert seen["files"] == ["train.csv"] and seen["rows"] == 2401

    s3.put_object(Bucket=DATA, Key="example/train/train.csv", Body=b"a,b\n1,2\n3,4\n")  # a new ETag
    third = run(tmp_path, *see, "--job-name", "s3-changed")
    assert third.returncode == 0, third.stderr
    assert f"s3://{DATA}/example/train/: downloaded 12 B" in third.stderr
    seen = json.loads(members(get(s3, JOBS, "runs/s3-changed/output/model.tar.gz"))["seen.json"])
    assert seen["rows"] == 3


def test_code_tarball_manifest_channel_and_checkpoints_from_s3(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=DATA, Key="code/sourcedir.tar.gz",
                  Body=tarball({"see.py": textwrap.dedent(SEEING_PROGRAM), "helper.txt": "x"}))
    for key in ("raw/2024/a.csv", "raw/2025/b.csv", "raw/2025/not-named.csv"):
        s3.put_object(Bucket=DATA, Key=key, Body=b"1\n2\n")
    s3.put_object(Bucket=DATA, Key="manifests/train.json",
                  Body=json.dumps([{"prefix": f"s3://{DATA}/raw/"}, "2025/b.csv", "2024/a.csv"]).encode())
    s3.put_object(Bucket=DATA, Key="ckpt/epoch-0.txt", Body=b"zero")
    s3.put_object(Bucket=DATA, Key="ckpt/epoch-1.txt", Body=b"one")
    proc = run(tmp_path, "local-train", "--mode", "process", "-e", "see.py",
               "-s", f"s3://{DATA}/code/sourcedir.tar.gz", "-c", f"train=s3://{DATA}/manifests/train.json",
               "--s3-data-type", "train=ManifestFile", "--checkpoint-s3-dir", f"s3://{DATA}/ckpt",
               "-o", f"s3://{JOBS}", "--job-name", "s3-code", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["CheckpointConfig"]["S3Uri"] == f"s3://{DATA}/ckpt"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{JOBS}/s3-code/output/model.tar.gz"
    seen = json.loads(members(get(s3, JOBS, "s3-code/output/model.tar.gz"))["seen.json"])
    assert seen["files"] == ["2024/a.csv", "2025/b.csv"] and seen["rows"] == 4
    assert seen["checkpoints"] == ["epoch-0.txt", "epoch-1.txt"]
    assert {"see.py", "helper.txt"} <= set(seen["code"])
    # The checkpoint prefix now mirrors /opt/ml/checkpoints at the end: epoch-2 added, epoch-0 deleted.
    assert keys(s3, DATA, "ckpt/") == ["ckpt/epoch-1.txt", "ckpt/epoch-2.txt"]
    assert members(get(s3, JOBS, "s3-code/output/output.tar.gz")) == {"note.txt": b"done"}


def test_serve_a_model_from_s3(s3: Any, tmp_path: Path, nginx_on_path: str) -> None:
    model = write_echo_model(tmp_path / "model")
    s3.put_object(Bucket=DATA, Key="models/echo/model.tar.gz", Body=tarball(
        {"code/inference.py": (model / "code" / "inference.py").read_text()}))
    port, ready = free_port(), tmp_path / "ready"
    proc = subprocess.Popen([*SMBYOC, "local-serve", "--mode", "process", "--model-data",
                             f"s3://{DATA}/models/echo/model.tar.gz", "--port", str(port), "--ready-file", str(ready)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), proc.communicate(timeout=30)
        answer = run(tmp_path, "invoke", "--url", ready.read_text().strip(), "--content-type", "text/csv", "a,b")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout == "A,B\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert f"s3://{DATA}/models/echo/model.tar.gz: downloaded" in err
    assert f"Starting endpoint (process mode) for s3://{DATA}/models/echo/model.tar.gz" in err


def test_transform_from_s3_to_s3(s3: Any, tmp_path: Path, nginx_on_path: str) -> None:
    model = write_echo_model(tmp_path / "model")
    s3.put_object(Bucket=DATA, Key="models/echo/model.tar.gz", Body=tarball(
        {"code/inference.py": (model / "code" / "inference.py").read_text()}))
    s3.put_object(Bucket=DATA, Key="batch/in/a.csv", Body=b"x,1\ny,2\n")
    s3.put_object(Bucket=DATA, Key="batch/in/sub/b.csv", Body=b"z,3\n")
    proc = run(tmp_path, "local-transform", "--mode", "process", "--model-data",
               f"s3://{DATA}/models/echo/model.tar.gz", "--input", f"s3://{DATA}/batch/in/",
               "--output", f"s3://{JOBS}/batch-out/", "--split-type", "Line", "--content-type", "text/csv",
               "--job-name", "s3-transform", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["TransformOutput"]["S3OutputPath"] == f"s3://{JOBS}/batch-out/"
    assert result["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{DATA}/batch/in/"
    # As SageMaker lays them out: <S3OutputPath>/<relative key>.out, no job-name level.
    assert keys(s3, JOBS) == ["batch-out/a.csv.out", "batch-out/sub/b.csv.out"]
    assert get(s3, JOBS, "batch-out/a.csv.out") == b"X,1\nY,2\n"
    assert get(s3, JOBS, "batch-out/sub/b.csv.out") == b"Z,3\n"


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_bad_s3_input_is_one_line_and_nothing_runs(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=DATA, Key="data/train/a.csv", Body=b"1\n")
    train = f"train=s3://{DATA}/data/train/"
    no_bucket = run(tmp_path, "local-train", "--mode", "process", "-c", train, "-o", "s3://no-such-bucket/jobs")
    assert one_error_line(no_bucket) == "Error: --output-dir s3://no-such-bucket/jobs: no such bucket 'no-such-bucket'"

    missing = run(tmp_path, "local-serve", "--mode", "process", "--model-data", f"s3://{DATA}/models/nope.tar.gz")
    assert one_error_line(missing) == \
        f"Error: --model-data s3://{DATA}/models/nope.tar.gz: no such object, and no objects under this prefix"

    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = run(tmp_path, "local-transform", "--mode", "process", "--input", f"s3://{DATA}/data/train/",
                      "--output", "out", "--endpoint-url", closed)
    assert f"cannot reach {closed} (" in one_error_line(unreachable)

    no_credentials = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    creds = run(tmp_path, "local-train", "--mode", "process", "-c", train, "-o", f"s3://{JOBS}/x", env=no_credentials)
    assert one_error_line(creds).startswith(
        "Error: use s3: no AWS credentials found in the credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE")

    assert keys(s3, JOBS) == []
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["state"], ["cache"], ["cache", "state"])
