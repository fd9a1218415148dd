"""`smbyoc local-transform --mode process`: real `serve` processes (nginx + gunicorn), real files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smbyoc.emulator import jobs
from smbyoc.emulator.transform.job import run_transform_job
from smbyoc.emulator.transform.spec import TransformJobSpec
from transform_support import recordio, write_broken_model, write_echo_model

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nginx_on_path: str) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_echo_model(tmp_path / "model")


def spec(tmp_path: Path, model: Path, inputs: Path, **kw: object) -> TransformJobSpec:
    options: dict[str, object] = {"content_type": "text/csv", **kw}
    return TransformJobSpec(job_name="t", model_data=model, input_path=inputs, output_dir=tmp_path / "out",
                            mode="process", **options)  # type: ignore[arg-type]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run([*SMBYOC, "local-transform", "--mode", "process", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_filters_join_gzip_two_instances_json(tmp_path: Path, model: Path) -> None:
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("1,x,10\n2,y,20\n3,z,30\n")
    (data / "sub" / "b.csv.gz").write_bytes(gzip.compress(b"4,w,40\n"))
    (data / "c.csv").write_text("5,v,50\n")
    result = cli(tmp_path, "--model-data", str(model), "--input", str(data), "--output", str(tmp_path / "out"),
                 "--split-type", "Line", "--content-type", "text/csv", "--accept", "text/csv",
                 "--batch-strategy", "MultiRecord", "--max-concurrent-transforms", "2", "--instance-count", "2",
                 "--input-filter", "$[1:]", "--join-source", "Input", "--output-filter", "$[0,3]",
                 "--assemble-with", "Line", "--job-name", "join-job", "--json")
    # b.csv.gz is not declared Gzip: only a job that says so decompresses; run the gzip object separately below.
    assert result.returncode == 1, result.stderr
    described = json.loads(result.stdout)
    assert described["TransformJobStatus"] == "Failed"
    assert "sub/b.csv.gz" in described["FailureReason"]
    out = tmp_path / "out"
    assert (out / "a.csv.out").read_text() == "1,X\n2,Y\n3,Z\n"
    assert (out / "c.csv.out").read_text() == "5,V\n"
    assert not (out / "sub" / "b.csv.gz.out").exists()
    hosts = {o["Key"]: o["Host"] for o in described["Objects"]}
    assert hosts == {"a.csv": "algo-1", "c.csv": "algo-2", "sub/b.csv.gz": "algo-1"}  # key order, round-robin
    assert described["MaxConcurrentTransforms"] == 2 and described["BatchStrategy"] == "MultiRecord"
    assert described["TransformResources"] == {"InstanceType": "local", "InstanceCount": 2}
    assert described["DataProcessing"] == {"InputFilter": "$[1:]", "OutputFilter": "$[0,3]", "JoinSource": "Input"}
    assert not list(out.rglob("*.partial"))
    assert not jobs.records()
    # The instances' lines are kept for `smbyoc logs`, by host.
    log_text = (tmp_path / "state" / "logs" / "transform-job-join-job.log").read_text()
    assert "[algo-1] " in log_text and "[algo-2] " in log_text

    gz = cli(tmp_path, "--model-data", str(model), "--input", str(data / "sub"), "--output", str(tmp_path / "gz"),
             "--split-type", "Line", "--content-type", "text/csv", "--compression", "Gzip")
    assert gz.returncode == 0, gz.stderr
    assert (tmp_path / "gz" / "b.csv.gz.out").read_text() == "4,W,40\n"


def test_failing_record_fails_the_object(tmp_path: Path, model: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "good.csv").write_text("a\nb\n")
    (data / "bad.csv").write_text("a\nFAIL\nc\n")
    result = run_transform_job(spec(tmp_path, model, data, split_type="Line", batch_strategy="SingleRecord",
                                    invocations_max_retries=1), sink=None)
    assert result.status == "Failed"
    assert result.failure_reason is not None
    assert "bad.csv: record 2: Bad HTTP status received from algorithm: 500" in result.failure_reason
    assert (tmp_path / "out" / "good.csv.out").read_text() == "A\nB\n"
    assert not (tmp_path / "out" / "bad.csv.out").exists()
    assert not list((tmp_path / "out").rglob("*.partial"))


@pytest.mark.parametrize(("setup", "options", "expected"), [
    ("empty", {}, "the input has no objects"),
    ("notgzip", {"compression": "Gzip", "split_type": "Line"}, "not gzip"),
    ("badrecordio", {"split_type": "RecordIO", "content_type": "application/x-recordio"}, "bad RecordIO magic"),
])
def test_bad_data_fails_the_job(tmp_path: Path, model: Path, setup: str, options: dict[str, str],
                                expected: str) -> None:
    data = tmp_path / "in"
    data.mkdir()
    if setup == "notgzip":
        (data / "x.csv.gz").write_text("plain text\n")
    elif setup == "badrecordio":
        (data / "x.rec").write_bytes(recordio([b"one"]) + b"\x00" * 8 + b"junk")
    result = run_transform_job(spec(tmp_path, model, data, **options), sink=None)
    assert result.status == "Failed"
    assert result.failure_reason is not None and expected in result.failure_reason, result.failure_reason
    assert not list((tmp_path / "out").rglob("*.out")) or setup == "badrecordio"
    assert not (tmp_path / "out" / "x.rec.out").exists()


def test_container_that_never_becomes_healthy(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "x.csv").write_text("a\n")
    broken = write_broken_model(tmp_path / "broken")
    result = cli(tmp_path, "--model-data", str(broken), "--input", str(data), "--output", str(tmp_path / "out"),
                 "--startup-health-timeout", "5")
    assert result.returncode == 1
    assert "FailureReason: AlgorithmError: algo-1: the container did not become healthy" in result.stderr
    assert not (tmp_path / "out" / "x.csv.out").exists()
    assert not jobs.records()


def test_bad_options_are_one_line(tmp_path: Path, model: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "x.csv").write_text("a\n")
    base = ["--model-data", str(model), "--input", str(data), "--output", str(tmp_path / "out")]
    for extra, message in [
        (["--split-type", "Lines"], "--split-type Lines: expected one of None, Line, RecordIO, TFRecord"),
        (["--batch-strategy", "Batch"], "--batch-strategy Batch: expected one of SingleRecord, MultiRecord"),
        (["--batch-strategy", "MultiRecord"], "MultiRecord needs --split-type Line, RecordIO or TFRecord"),
        (["--max-payload", "20", "--max-concurrent-transforms", "6"], "must not exceed 100"),
    ]:
        result = cli(tmp_path, *base, *extra)
        assert result.returncode == 1
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_like_stop_transform_job(tmp_path: Path, model: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.csv").write_text("quick\n")
    (data / "b.csv").write_text("SLOW\n" * 40)
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [*SMBYOC, "local-transform", "--mode", "process", "--model-data", str(model), "--input", str(data),
         "--output", str(tmp_path / "out"), "--split-type", "Line", "--batch-strategy", "SingleRecord",
         "--content-type", "text/csv", "--job-name", "stop-me"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob(".b.csv.out.*.partial")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    records = (tmp_path / "state" / "transforms" / "stop-me.json")
    assert records.exists()  # `smbyoc ps` lists the running job
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Stopped" in err
    assert (tmp_path / "out" / "a.csv.out").read_text() == "QUICK\n"
    assert not (tmp_path / "out" / "b.csv.out").exists()
    assert not list((tmp_path / "out").rglob("*.partial"))
    assert not list((tmp_path / "state").rglob("*.json"))  # job and endpoint records removed: servers gone
