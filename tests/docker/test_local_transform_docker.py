"""`smbyoc local-transform` in Docker: the default serve image, one container per instance, real files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator.transform.job import run_transform_job
from smbyoc.emulator.transform.records import encode_recordio, encode_tfrecord
from smbyoc.emulator.transform.spec import TransformJobSpec
from transform_support import recordio, tfrecord, write_echo_model

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
PAYLOADS = [b"ab", b"cde", b"fghij"]


@pytest.fixture(scope="module")
def image(default_images: dict[str, str]) -> str:
    return default_images["serve"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_echo_model(tmp_path_factory.mktemp("transform") / "model")


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))


def transform_containers(client: Any) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"name": "smbyoc-transform-"})]


def run(tmp_path: Path, image: str, model: Path, inputs: Path, **kw: Any) -> Any:
    options = {"content_type": "text/csv", **kw}
    spec = TransformJobSpec(job_name="docker-job", model_data=model, input_path=inputs, output_dir=tmp_path / "out",
                            image=image, **options)
    return run_transform_job(spec, image=image, sink=None)


@pytest.mark.parametrize(("split", "strategy", "data", "expected"), [
    ("None", "SingleRecord", b"ab\x00cd", b"<ab\x00cd>"),
    ("Line", "SingleRecord", b"ab\ncde\n", b"AB\nCDE\n"),
    ("Line", "MultiRecord", b"ab\ncde\n", b"AB\nCDE\n"),
    ("RecordIO", "SingleRecord", recordio(PAYLOADS), b"<ab><cde><fghij>"),
    ("RecordIO", "MultiRecord", recordio(PAYLOADS), b"<" + recordio(PAYLOADS) + b">"),
    ("TFRecord", "SingleRecord", tfrecord(PAYLOADS), b"<ab><cde><fghij>"),
    ("TFRecord", "MultiRecord", tfrecord(PAYLOADS), b"<" + tfrecord(PAYLOADS) + b">"),
])
def test_split_types_and_strategies(tmp_path: Path, image: str, model: Path, docker_client: Any, split: str,
                                    strategy: str, data: bytes, expected: bytes) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "obj").write_bytes(data)
    content_type = "text/csv" if split == "Line" else "application/octet-stream"
    result = run(tmp_path, image, model, tmp_path / "in", split_type=split, batch_strategy=strategy,
                 content_type=content_type)
    assert result.status == "Completed", result.failure_reason
    assert (tmp_path / "out" / "obj.out").read_bytes() == expected
    assert result.to_dict()["BatchStrategy"] == strategy
    assert not transform_containers(docker_client)


def test_filters_and_join(tmp_path: Path, image: str, model: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_text("1,x,10\n2,y,20\n")
    result = run(tmp_path, image, model, tmp_path / "in", split_type="Line", batch_strategy="MultiRecord",
                 accept="text/csv", input_filter="$[1:]", join_source="Input", output_filter="$[0,3]",
                 assemble_with="Line", max_concurrent_transforms=2)
    assert result.status == "Completed", result.failure_reason
    assert (tmp_path / "out" / "rows.csv.out").read_text() == "1,X\n2,Y\n"


def test_gzip_objects_from_a_manifest(tmp_path: Path, image: str, model: Path) -> None:
    data = tmp_path / "data"
    (data / "part").mkdir(parents=True)
    (data / "part" / "a.csv.gz").write_bytes(gzip.compress(b"one\ntwo\n"))
    (data / "b.csv.gz").write_bytes(gzip.compress(b"three\n"))
    (data / "ignored.csv.gz").write_bytes(gzip.compress(b"not named\n"))
    manifest = tmp_path / "input.manifest"
    manifest.write_text(json.dumps([{"prefix": data.as_uri() + "/"}, "part/a.csv.gz", "b.csv.gz"]))
    result = run(tmp_path, image, model, manifest, split_type="Line", compression="Gzip",
                 s3_data_type="ManifestFile")
    assert result.status == "Completed", result.failure_reason
    out = tmp_path / "out"
    assert (out / "part" / "a.csv.gz.out").read_text() == "ONE\nTWO\n"
    assert (out / "b.csv.gz.out").read_text() == "THREE\n"
    assert not (out / "ignored.csv.gz.out").exists()


def test_two_instances_share_the_objects(tmp_path: Path, image: str, model: Path, docker_client: Any) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "in" / f"{name}.csv").write_text(f"{name}\n")
    result = run(tmp_path, image, model, tmp_path / "in", split_type="Line", instance_count=2)
    assert result.status == "Completed", result.failure_reason
    assert {o.key: o.host for o in result.objects} == {"a.csv": "algo-1", "b.csv": "algo-2", "c.csv": "algo-1"}
    for name in ("a", "b", "c"):
        assert (tmp_path / "out" / f"{name}.csv.out").read_text() == f"{name.upper()}\n"
    assert not transform_containers(docker_client)


def test_a_failing_record_fails_its_object(tmp_path: Path, image: str, model: Path, docker_client: Any) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.rec").write_bytes(encode_recordio(b"fine"))
    (tmp_path / "in" / "bad.rec").write_bytes(encode_tfrecord(b"x"))  # TFRecord bytes: a corrupt RecordIO header
    (tmp_path / "in" / "boom.csv").write_text("a\nFAIL\n")
    result = run(tmp_path, image, model, tmp_path / "in", split_type="RecordIO", batch_strategy="SingleRecord",
                 content_type="application/octet-stream", invocations_max_retries=0)
    assert result.status == "Failed"
    reasons = {o.key: o.failure_reason for o in result.objects}
    assert reasons["ok.rec"] is None and (tmp_path / "out" / "ok.rec.out").read_bytes() == b"<fine>"
    assert reasons["bad.rec"] is not None and "bad.rec: record 1: bad RecordIO magic" in reasons["bad.rec"]
    assert reasons["boom.csv"] is not None and "boom.csv" in reasons["boom.csv"]
    assert result.failure_reason == reasons["bad.rec"]  # the first failed object in key order
    assert not (tmp_path / "out" / "bad.rec.out").exists() and not (tmp_path / "out" / "boom.csv.out").exists()
    assert not transform_containers(docker_client)

    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "rows.csv").write_text("a\nFAIL\nc\n")
    second = run(tmp_path, image, model, tmp_path / "in2", split_type="Line", batch_strategy="SingleRecord",
                 invocations_max_retries=1)
    assert second.failure_reason is not None
    assert "rows.csv: record 2: Bad HTTP status received from algorithm: 500" in second.failure_reason
    assert "(tried 2 times)" in second.failure_reason
    assert not (tmp_path / "out" / "rows.csv.out").exists()


def test_ctrl_c_stops_the_job(tmp_path: Path, image: str, model: Path, docker_client: Any) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("quick\n")
    (tmp_path / "in" / "b.csv").write_text("SLOW\n" * 40)
    env = {**os.environ, "SMBYOC_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [*SMBYOC, "local-transform", "--image", image, "--model-data", str(model), "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--split-type", "Line", "--batch-strategy", "SingleRecord",
         "--content-type", "text/csv", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob(".b.csv.out.*.partial")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert transform_containers(docker_client)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(out)["TransformJobStatus"] == "Stopped"
    assert (tmp_path / "out" / "a.csv.out").read_text() == "QUICK\n"
    assert not (tmp_path / "out" / "b.csv.out").exists()
    assert not list((tmp_path / "out").rglob("*.partial"))
    assert not transform_containers(docker_client)
