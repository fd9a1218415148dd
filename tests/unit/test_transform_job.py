"""The transform job engine: validation, precedence, object listing, and the invocation loop against a real
local HTTP server standing in for the container (order kept under concurrency, retries, chunked bodies)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator.endpoint import EndpointSpec
from smbyoc.emulator.transform.inputs import assign, list_objects
from smbyoc.emulator.transform.job import resolve, run_transform_job
from smbyoc.emulator.transform.spec import TransformJobSpec
from smbyoc.errors import ConfigError


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "in").mkdir()


def make_spec(tmp_path: Path, **kw: Any) -> TransformJobSpec:
    options = {"job_name": "job", **kw}
    return TransformJobSpec(model_data=None, input_path=tmp_path / "in", output_dir=tmp_path / "out",
                            mode="process", **options)


@pytest.mark.parametrize(("options", "message"), [
    ({"split_type": "Lines"}, "--split-type Lines: expected one of None, Line, RecordIO, TFRecord"),
    ({"batch_strategy": "Mini"}, "--batch-strategy Mini: expected one of SingleRecord, MultiRecord"),
    ({"batch_strategy": "MultiRecord"}, "MultiRecord needs --split-type Line, RecordIO or TFRecord"),
    ({"max_payload_mb": 20, "max_concurrent_transforms": 6}, "MaxConcurrentTransforms x MaxPayloadInMB"),
    ({"max_payload_mb": 101}, "--max-payload 101: expected 0-100"),
    ({"compression": "Zip"}, "--compression Zip"),
    ({"invocations_max_retries": 4}, "--invocations-max-retries 4: expected 0-3"),
    ({"invocations_timeout": 0}, "--invocations-timeout 0"),
    ({"instance_count": 0}, "--instance-count 0"),
    ({"job_name": "bad name"}, "--job-name 'bad name'"),
    ({"split_type": "RecordIO", "join_source": "Input"}, "not on RecordIO records"),
    ({"input_filter": "$..x"}, "--input-filter"),
])
def test_validation_names_the_culprit(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_spec(tmp_path, **options).validate()
    assert message in str(info.value)


def test_an_output_that_cannot_be_a_directory_is_named_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for output, words in ((tmp_path / "file" / "out", "file is not a directory"),
                          (Path("/proc/smbyoc-no/out"), "cannot create directories in /proc")):
        with pytest.raises(ConfigError) as info:
            replace(make_spec(tmp_path), output_dir=output).validate()
        assert str(info.value).startswith(f"--output {output}: ") and words in str(info.value)
    replace(make_spec(tmp_path), output_dir=tmp_path / "new" / "deep").validate()  # to be made: fine, not made yet
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".smbyoc-probe-*"))


def test_a_product_of_exactly_100_is_accepted(tmp_path: Path) -> None:
    make_spec(tmp_path, max_payload_mb=25, max_concurrent_transforms=4, split_type="Line").validate()


def test_container_environment_only_names_what_the_job_sets(tmp_path: Path) -> None:
    assert make_spec(tmp_path).container_environment() == {"SAGEMAKER_BATCH": "true"}
    env = make_spec(tmp_path, max_payload_mb=0, batch_strategy="SingleRecord", max_concurrent_transforms=3,
                    environment={"A": "1"}).container_environment()
    assert env == {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
                   "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "A": "1"}


@pytest.mark.parametrize(("options", "answered", "expected"), [
    ({}, {}, ("SingleRecord", 6, 1)),
    ({"split_type": "Line"}, {}, ("MultiRecord", 6, 1)),
    ({"split_type": "Line"}, {"BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 2, "MaxConcurrentTransforms": 4},
     ("SingleRecord", 2, 4)),
    ({"split_type": "Line"}, {"BatchStrategy": "SingleRecord"}, ("SingleRecord", 6, 1)),
    ({"split_type": "Line", "batch_strategy": "MultiRecord", "max_payload_mb": 1, "max_concurrent_transforms": 2},
     {"BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 50, "MaxConcurrentTransforms": 8}, ("MultiRecord", 1, 2)),
    ({"split_type": "Line"}, {"BatchStrategy": "sideways", "MaxPayloadInMB": 500, "MaxConcurrentTransforms": "x"},
     ("MultiRecord", 6, 1)),
    ({}, {"BatchStrategy": "MULTI_RECORD"}, ("SingleRecord", 6, 1)),  # SplitType None: one request per object
])
def test_precedence_job_then_execution_parameters_then_defaults(
        tmp_path: Path, options: dict[str, Any], answered: dict[str, Any], expected: tuple[str, int, int]) -> None:
    resolved = resolve(make_spec(tmp_path, **options), answered)
    assert (resolved.batch_strategy, resolved.max_payload_mb, resolved.max_concurrent_transforms) == expected


def test_objects_in_key_order_and_round_robin(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for key in ("b/z.csv", "a.csv", "b.csv", "B.csv"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text("x\n")
    keys = [o.key for o in list_objects(root, "S3Prefix")]
    assert keys == ["B.csv", "a.csv", "b.csv", "b/z.csv"]
    shares = assign(list_objects(root, "S3Prefix"), 3)
    assert [[o.key for o in share] for share in shares] == [["B.csv", "b/z.csv"], ["a.csv"], ["b.csv"]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no objects"):
        list_objects(tmp_path / "empty", "S3Prefix")


# -- the invocation loop against a real HTTP server --------------------------------------------------------


class Container(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.failures: dict[bytes, int] = {}  # payload -> how many times to answer 500 first
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    server: Container

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD"}' \
            if self.path == "/execution-parameters" else b"{}"
        self._answer(200, body)

    def do_POST(self) -> None:  # noqa: N802
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.requests.append((body, dict(self.headers)))
            left = self.server.failures.get(body, 0)
            if left:
                self.server.failures[body] = left - 1
        if left:
            self._answer(500 if left > 0 else 400, b"no")
            return
        if body.startswith(b"1"):
            time.sleep(0.2)  # the first record answers last: the output must keep input order
        self._answer(200, body.upper())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeEndpoint:
    """Stands in for a started ``serve``: the job only needs ``start``, ``url`` and ``close``."""

    def __init__(self, server: Container) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def start(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


@pytest.fixture
def container() -> Iterator[Container]:
    server = Container()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_against(container: Container, spec: TransformJobSpec) -> Any:
    seen: list[EndpointSpec] = []

    def backend(host: str, endpoint_spec: EndpointSpec) -> Any:
        seen.append(endpoint_spec)
        return FakeEndpoint(container)

    result = run_transform_job(spec, backend=backend, sink=None)
    assert [s.environment["SAGEMAKER_BATCH"] for s in seen] == ["true"] * spec.instance_count
    return result


def test_order_kept_with_concurrent_requests(tmp_path: Path, container: Container) -> None:
    spec = make_spec(tmp_path, split_type="Line", content_type="text/csv", accept="text/csv")
    (tmp_path / "in" / "rows.csv").write_text("1a\n2b\n3c\n4d\n")
    result = run_against(container, spec)
    assert result.status == "Completed", result.failure_reason
    assert result.parameters.max_concurrent_transforms == 4  # from /execution-parameters
    assert (tmp_path / "out" / "rows.csv.out").read_text() == "1A\n2B\n3C\n4D\n"
    assert {h.get("Content-Type") for _, h in container.requests} == {"text/csv"}
    assert {h.get("Accept") for _, h in container.requests} == {"text/csv"}
    assert result.to_dict()["TransformJobStatus"] == "Completed"


def test_retries_on_500_then_succeeds_and_4xx_is_not_retried(tmp_path: Path, container: Container) -> None:
    (tmp_path / "in" / "a.csv").write_text("x\n")
    (tmp_path / "in" / "b.csv").write_text("y\n")
    container.failures = {b"x\n": 2, b"y\n": -1}
    result = run_against(container, make_spec(tmp_path, split_type="Line", invocations_max_retries=2))
    assert (tmp_path / "out" / "a.csv.out").read_text() == "X\n"
    assert [body for body, _ in container.requests].count(b"x\n") == 3
    assert [body for body, _ in container.requests].count(b"y\n") == 1
    assert result.status == "Failed"
    assert result.failure_reason == "AlgorithmError: b.csv: record 1: Bad HTTP status received from algorithm: 400 (no)"
    assert not (tmp_path / "out" / "b.csv.out").exists()


def test_max_payload_zero_sends_the_object_chunked(tmp_path: Path, container: Container) -> None:
    (tmp_path / "in" / "big.csv").write_text("a\n" * 1000)
    result = run_against(container, make_spec(tmp_path, split_type="Line", batch_strategy="MultiRecord",
                                              max_payload_mb=0))
    assert result.status == "Completed", result.failure_reason
    [(body, headers)] = container.requests
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    assert (tmp_path / "out" / "big.csv.out").read_text() == "A\n" * 1000


def test_record_over_the_payload_limit_fails_the_object(tmp_path: Path, container: Container) -> None:
    (tmp_path / "in" / "wide.csv").write_bytes(b"ok\n" + b"x" * (1024 * 1024 + 1) + b"\n")
    result = run_against(container, make_spec(tmp_path, split_type="Line", batch_strategy="SingleRecord",
                                              max_payload_mb=1))
    assert result.status == "Failed"
    assert "wide.csv: record 2 is" in (result.failure_reason or "")
    assert not (tmp_path / "out" / "wide.csv.out").exists()
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_empty_input_fails_the_job_before_any_container(tmp_path: Path) -> None:
    started: list[str] = []
    result = run_transform_job(make_spec(tmp_path), backend=lambda host, s: started.append(host),  # type: ignore
                               sink=None)
    assert result.status == "Failed"
    assert result.failure_reason is not None and "the input has no objects" in result.failure_reason
    assert started == []


def test_status_line_shows_objects_records_rate_and_eta() -> None:
    import io

    from smbyoc.cli.transform_cmd import TransformDisplay
    from smbyoc.emulator.transform.engine import Progress

    display = TransformDisplay("job", 2, err=io.StringIO(), live=False)
    display.on_status("InProgress", "Transforming 4 object(s)")
    display.on_progress(Progress(objects_total=4, objects_done=1, objects_failed=0, records_done=50,
                                 bytes_total=400, bytes_done=100, elapsed=10.0))
    line = display.line()
    assert "objects 1/4" in line and "records 50" in line and "5 records/s" in line and "ETA 00:30" in line


def test_an_input_that_is_not_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.csv").write_text("1\n")
    (tmp_path / "in" / "gone.csv").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="gone.csv: not a regular file"):
        list_objects(tmp_path / "in", "S3Prefix")


# -- hostile inputs --------------------------------------------------------------------------------------------
def test_inputs_that_no_s3_listing_could_give_are_named(tmp_path: Path) -> None:
    import os

    root = tmp_path / "odd"
    root.mkdir()
    (root / "a.csv").write_text("x\n")
    (root / os.fsdecode(b"bad\xff.csv")).write_text("y\n")
    with pytest.raises(ConfigError, match=r"--input b'.*bad\\xff.csv': the file name is not UTF-8 text"):
        list_objects(root, "S3Prefix")
    linked = tmp_path / "linked"
    (linked / "sub").mkdir(parents=True)
    (linked / "sub" / "a.csv").write_text("x\n")
    (linked / "loop").symlink_to(linked)  # a link to a folder: followed, it would loop
    with pytest.raises(ConfigError, match=r"--input .*linked/loop: a link to a folder"):
        list_objects(linked, "S3Prefix")
    (tmp_path / "in" / "a.csv").write_text("x\n")
    manifest = tmp_path / "in.manifest"
    manifest.write_text(json.dumps([{"prefix": str(tmp_path / "in") + "/"}, "a.csv", "./a.csv"]))
    with pytest.raises(ConfigError, match=r"'./a.csv' names the same object as 'a.csv'"):
        list_objects(manifest, "ManifestFile")


def test_an_output_where_another_output_is_a_file_fails_that_object_only(tmp_path: Path,
                                                                        container: Container) -> None:
    for key in ("a", "a.out/b", "c"):  # a -> a.out (a file); a.out/b -> a.out/b.out (needs a.out a folder)
        (tmp_path / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / key).write_text(f"{key}\n")
    result = run_against(container, make_spec(tmp_path, split_type="Line"))
    assert result.status == "Failed"
    assert result.failure_reason == ("ClientError: a.out/b: its output a.out/b.out needs the folder "
                                     f"{tmp_path / 'out' / 'a.out'}, where another output is a file (S3 keys can "
                                     "be both; local paths cannot)")
    assert (tmp_path / "out" / "a.out").read_text() == "A\n" and (tmp_path / "out" / "c.out").read_text() == "C\n"


def test_the_failure_reason_is_the_first_failed_object_in_key_order(tmp_path: Path, container: Container) -> None:
    (tmp_path / "in" / "a.csv").write_text("1 slow, then fails\nbad-a\n")  # fails late (its first record is slow)
    (tmp_path / "in" / "b.csv").write_text("bad-b\n")  # fails at once, on the other instance
    container.failures = {b"bad-a\n": -1, b"bad-b\n": -1}
    result = run_against(container, make_spec(tmp_path, split_type="Line", instance_count=2))
    assert result.failure_reason == "AlgorithmError: a.csv: record 2: Bad HTTP status received from algorithm: 400 (no)"


def test_a_job_leaves_other_jobs_temporary_files_alone(tmp_path: Path, container: Container) -> None:
    (tmp_path / "out").mkdir()
    others = tmp_path / "out" / ".slow.csv.out.0123abcd.partial"  # another job's output in progress
    others.write_text("half")
    (tmp_path / "in" / "a.csv").write_text("x\n")
    result = run_against(container, make_spec(tmp_path, split_type="Line"))
    assert result.status == "Completed", result.failure_reason
    assert others.read_text() == "half" and (tmp_path / "out" / "a.csv.out").read_text() == "X\n"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")] == [others.name]
