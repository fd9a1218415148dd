"""The failure/success files: first writer wins, atomic, the first 1024 characters useful."""

from __future__ import annotations

import threading

from smbyoc.paths import Paths
from smbyoc.training.failure import (
    FAILURE_REASON_LIMIT,
    TRUNCATED,
    format_failure,
    read_failure_reason,
    write_failure,
    write_success,
)


def test_short_failure_has_type_message_and_tail(tmp_path):
    text = format_failure("ValueError", "bad lr", "Traceback...\nValueError: bad lr\n")
    assert text.startswith("ValueError: bad lr\nstderr (last lines):\nTraceback...")
    assert "--- details ---" not in text


def test_long_message_and_tail_keep_the_end_of_stderr_in_the_reason():
    message = "m" * 5000
    tail = "".join(f"line {i}\n" for i in range(2000)) + "KeyError: 'the real cause'"
    text = format_failure("KeyError", message, tail)
    reason = text[:FAILURE_REASON_LIMIT]
    assert reason.startswith("KeyError: mmm")
    assert TRUNCATED in reason  # the message was cut and says so
    assert "KeyError: 'the real cause'" in reason  # the last stderr line survives
    assert "[truncated]…" in reason  # the front of the tail was cut and says so
    assert "--- details ---" in text and message in text  # full message kept after the reason


def test_first_writer_wins(tmp_path):
    paths = Paths(tmp_path)
    assert write_failure(paths, "first") is True
    assert write_failure(paths, "second") is False
    assert paths.failure_file.read_text() == "first"
    assert not [p for p in paths.output_dir.iterdir() if p.name != "failure"]  # no temp files left


def test_concurrent_writers_leave_exactly_one_whole_text(tmp_path):
    paths = Paths(tmp_path)
    results: list[bool] = []
    texts = [f"writer {i} " * 200 for i in range(8)]
    threads = [threading.Thread(target=lambda t=t: results.append(write_failure(paths, t))) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert paths.failure_file.read_text() in texts


def test_base_dir_string_accepted_and_success_file(tmp_path):
    assert write_failure(str(tmp_path), "x")
    assert (tmp_path / "output" / "failure").read_text() == "x"
    success = write_success(tmp_path)
    assert success == tmp_path / "output" / "success" and success.read_bytes() == b""


def test_read_failure_reason(tmp_path):
    paths = Paths(tmp_path)
    assert read_failure_reason(paths) is None
    paths.output_dir.mkdir(parents=True)
    paths.failure_file.write_bytes(("é" * 2000).encode() + b"\xff")
    reason = read_failure_reason(paths)
    assert reason == "é" * 1024
    paths.failure_file.write_bytes(b"bad \xff byte")
    assert read_failure_reason(paths) == "bad \ufffd byte"
