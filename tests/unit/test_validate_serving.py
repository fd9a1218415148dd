"""The parts of validate's dynamic checks that need no Docker Engine: the oversized POST against real sockets,
how a training job is observed from the host (real files, real access times), and how each check reads an
emulated job's outcome."""

from __future__ import annotations

import datetime as _dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.layout import HostTree, lay_out_host
from smbyoc.emulator.result import HostOutcome, TrainingJobResult
from smbyoc.validate.serving import post_oversized
from smbyoc.validate.training import (
    CONFIG_FILES,
    MISSING_PROGRAM,
    Observation,
    ObservedBackend,
    TrainingInputs,
    TrainingSettings,
    check_config,
    check_failure,
    check_model,
    check_sigterm,
    failure_spec,
    reads_observable,
)

SIZE = 6 * 1024 * 1024 + 1


# ------------------------------------------------------------------------------------ oversized POST
@pytest.fixture()
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """``start(handler)``: a loopback TCP server handling one connection with ``handler``; its port."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        sockets.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                handler(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    for s in sockets:
        s.close()
    for t in threads:
        t.join(5)


def read_head(conn: socket.socket) -> tuple[bytes, int]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head, length - len(rest)


def drain(conn: socket.socket, left: int) -> None:
    while left > 0:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return
        left -= len(chunk)


def test_a_server_that_reads_the_body_and_refuses_it_gives_413(server: Any) -> None:
    def handler(conn: socket.socket) -> None:
        head, left = read_head(conn)
        assert b"POST /invocations HTTP/1.1" in head and b"Content-Type: text/csv" in head
        drain(conn, left)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    assert post_oversized(f"http://127.0.0.1:{server(handler)}", SIZE, "text/csv", 30) == (413, "")


def test_an_answer_sent_before_the_body_is_read_is_seen_at_once(server: Any) -> None:
    release = threading.Event()

    def handler(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        release.wait(10)  # neither reads the body nor closes: a blocking sender would hang here

    started = time.monotonic()
    try:
        assert post_oversized(f"http://127.0.0.1:{server(handler)}", SIZE, "text/csv", 30) == (413, "")
    finally:
        release.set()
    assert time.monotonic() - started < 5


def test_a_server_that_takes_the_body_answers_with_its_own_status(server: Any) -> None:
    def handler(conn: socket.socket) -> None:
        drain(conn, read_head(conn)[1])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    assert post_oversized(f"http://127.0.0.1:{server(handler)}", SIZE, "text/csv", 30) == (200, "")


def test_no_answer_is_told_apart_from_an_answer(server: Any) -> None:
    def closes(conn: socket.socket) -> None:
        read_head(conn)

    status, what = post_oversized(f"http://127.0.0.1:{server(closes)}", SIZE, "text/csv", 30)
    assert status is None and what in ("closed the connection without an answer",
                                       "broke the connection (Connection reset by peer)"), what

    hold = threading.Event()

    def silent(conn: socket.socket) -> None:
        drain(conn, read_head(conn)[1])
        hold.wait(10)

    try:
        status, what = post_oversized(f"http://127.0.0.1:{server(silent)}", SIZE, "text/csv", 1.0)
    finally:
        hold.set()
    assert (status, what) == (None, "gave no answer within 1 s")
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    status, what = post_oversized(f"http://127.0.0.1:{port}", SIZE, "text/csv", 5)
    assert status is None and what.startswith("could not be reached")


# ------------------------------------------------------------------------------- observing a job
class ReadingInner:
    """Stands in for the Docker backend: ``run`` reads ``reads`` of the host's config files, like a container."""

    image = "img:1"

    def __init__(self, reads: tuple[str, ...], model: bool = True, failure: str = "") -> None:
        self.reads, self.model, self.failure = reads, model, failure
        self.started = threading.Event()
        self.calls: list[str] = []

    def preflight(self, spec: TrainingJobSpec) -> None: ...

    def run(self, spec: TrainingJobSpec, trees: list[HostTree]) -> list[HostOutcome]:
        paths = trees[0].paths
        for name in self.reads:
            (paths.input_config_dir / name).read_bytes()
        if self.model:
            (paths.model_dir / "model.bin").write_bytes(b"12345")
        if self.failure:
            (paths.output_dir / "failure").write_text(self.failure, encoding="utf-8")
        return [HostOutcome("algo-1", 1 if self.failure else 0)]

    def stop(self) -> None:
        self.calls.append("stop")

    def kill(self) -> None:
        self.calls.append("kill")


def tree(tmp_path: Path) -> HostTree:
    spec = TrainingJobSpec(job_name="job", hyperparameters={"a": "1"})
    return lay_out_host(spec, "algo-1", tmp_path / "algo-1")


def test_the_host_sees_which_config_files_were_read_and_what_was_written(tmp_path: Path) -> None:
    if not reads_observable(tmp_path):
        pytest.skip(f"{tmp_path} does not record access times (noatime)")
    host = tree(tmp_path)
    for name in CONFIG_FILES:  # written just now, and read once by the layout's own checks at most
        (host.paths.input_config_dir / name).read_bytes()
    backend = ObservedBackend(ReadingInner(("hyperparameters.json",), failure="AlgorithmError: boom"),
                              observe_reads=True)
    backend.run(TrainingJobSpec(job_name="job", hyperparameters={}), [host])
    obs = backend.observation
    assert obs.config_reads == {"hyperparameters.json": True, "inputdataconfig.json": False,
                                "resourceconfig.json": False}
    assert (obs.model_files, obs.model_bytes, obs.failure_text) == (1, 5, "AlgorithmError: boom")
    assert obs.outcome == HostOutcome("algo-1", 1) and obs.sigterm_at is None


def test_a_cancelled_backend_starts_nothing_and_stops_what_runs(tmp_path: Path) -> None:
    from smbyoc.errors import SmbyocError

    inner = ReadingInner(())
    backend = ObservedBackend(inner, observe_reads=False)
    backend.cancel()
    assert inner.calls == ["stop", "kill"]
    with pytest.raises(SmbyocError, match="stopped before it started"):
        backend.run(TrainingJobSpec(job_name="job", hyperparameters={}), [tree(tmp_path)])


# ---------------------------------------------------------------------------------- reading outcomes
def job(status: str = "Completed", secondary: str | None = None, reason: str | None = None) -> TrainingJobResult:
    start = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    return TrainingJobResult(job_name="j", job_arn="arn", status=status, secondary_status=secondary or status,
                             exit_code=0 if status == "Completed" else 1, failure_reason=reason, start_time=start,
                             end_time=start + _dt.timedelta(seconds=2), hyperparameters={}, instance_type="local",
                             instance_count=1, mode="docker")


def test_train_model_needs_a_completed_job_with_files_in_the_model_directory() -> None:
    assert check_model(job(), Observation(model_files=2, model_bytes=10), "").passed
    empty = check_model(job(), Observation(), "log")
    assert empty.failed and "left /opt/ml/model empty" in empty.detail and empty.log == "log"
    bad = check_model(job("Failed", reason="AlgorithmError: x"), Observation(), "")
    assert bad.failed and "the job Failed after 2.0 s: AlgorithmError: x" in bad.detail


def test_train_config_lists_what_was_read_and_is_na_when_reads_cannot_be_seen() -> None:
    assert check_config(Observation(), "the engine runs in a VM", "", 1).detail == "the engine runs in a VM"
    none = check_config(Observation(config_reads={n: False for n in CONFIG_FILES}), None, "", 1)
    assert none.failed and "read none of" in none.detail
    some = check_config(Observation(config_reads={"hyperparameters.json": True, "resourceconfig.json": False}),
                        None, "", 1)
    assert some.passed and some.detail == "train read hyperparameters.json (not resourceconfig.json)"


def test_train_failure_needs_a_failure_file_and_is_na_when_the_job_would_not_fail() -> None:
    failing = Observation(failure_text="UserCodeError: no program", outcome=HostOutcome("algo-1", 127))
    assert check_failure(job("Failed"), failing, "how", "").passed
    silent = check_failure(job("Failed"), Observation(outcome=HostOutcome("algo-1", 2)), "how", "")
    assert silent.failed and "exit status 2" in silent.detail and "wrote no /opt/ml/output/failure" in silent.detail
    na = check_failure(job(), Observation(), "how", "")
    assert na.status == "n/a" and "--fail-hyperparameter" in na.detail
    hung = check_failure(job("Failed", "MaxRuntimeExceeded"), Observation(), "how", "")
    assert hung.failed and "MaxRuntimeExceeded" in hung.detail


def test_train_sigterm_fails_only_when_sigkill_was_needed() -> None:
    settings = TrainingSettings(stop_timeout=3.0, sigterm_after=1.0)
    killed = Observation(sigterm_at=10.0, ended_at=13.2, outcome=HostOutcome("algo-1", 137))
    assert check_sigterm(job("Failed"), killed, settings, "").failed
    stopped = Observation(sigterm_at=10.0, ended_at=10.4, outcome=HostOutcome("algo-1", 0))
    assert check_sigterm(job(), stopped, settings, "").passed
    early = check_sigterm(job(), Observation(outcome=HostOutcome("algo-1", 0)), settings, "")
    assert early.status == "n/a" and "--keep-running-hyperparameter" in early.detail


def test_the_job_meant_to_fail_names_a_missing_program_unless_told_otherwise() -> None:
    spec = TrainingJobSpec(job_name="j", hyperparameters={"epochs": "1"}, environment={"A": "1"})
    failing, how = failure_spec(spec, TrainingInputs())
    assert failing.hyperparameters["sagemaker_program"] == f'"{MISSING_PROGRAM}"'
    assert failing.environment == {"A": "1", "SAGEMAKER_PROGRAM": MISSING_PROGRAM} and MISSING_PROGRAM in how
    chosen, how = failure_spec(spec, TrainingInputs(fail_hyperparameters={"fail": "yes"}))
    assert chosen.hyperparameters == {"epochs": "1", "fail": "yes"} and how == "hyperparameters fail=yes"
