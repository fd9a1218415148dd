"""Pure helpers behind what the emulator reports: terminal-safe text, SageMaker's FailureReason shape, and
the fixed host addresses of a job network (the real network is exercised in tests/docker)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from smbyoc.cli.status_line import stdout_to_stderr
from smbyoc.emulator.docker_training import host_addresses
from smbyoc.errors import DockerError
from smbyoc.logs import terminal_safe
from smbyoc.training.failure import FAILURE_REASON_LIMIT, algorithm_error_reason


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, ünïcödé, 日本", "plain text, ünïcödé, 日本"),
    ("keeps\nnewline\tand tab", "keeps\nnewline\tand tab"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("bell\x07 cr\r del\x7f nul\x00", "bell\\x07 cr\\x0d del\\x7f nul\\x00"),
    ("c1 \x9b csi", "c1 \\x9b csi"),
    ("bidi \u202e override, zero\u200bwidth", "bidi \\u202e override, zero\\u200bwidth"),
    ("tag \U000e0041", "tag \\U000e0041"),
])
def test_terminal_safe(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown


def test_algorithm_error_reason_is_cut_at_the_api_limit() -> None:
    assert algorithm_error_reason("ValueError: bad") == "AlgorithmError: ValueError: bad"
    long = algorithm_error_reason("x" * FAILURE_REASON_LIMIT)
    assert len(long) == FAILURE_REASON_LIMIT and long.startswith("AlgorithmError: xxx")


def test_host_addresses_skip_network_and_gateway() -> None:
    assert host_addresses("172.30.0.0/16", "172.30.0.1", ["algo-1", "algo-2"]) == {
        "algo-1": "172.30.0.2", "algo-2": "172.30.0.3"}
    assert host_addresses("10.9.8.0/24", "10.9.8.3", ["algo-1", "algo-2", "algo-3"]) == {
        "algo-1": "10.9.8.1", "algo-2": "10.9.8.2", "algo-3": "10.9.8.4"}
    assert host_addresses("10.9.8.0/24", None, ["algo-1"]) == {"algo-1": "10.9.8.2"}
    with pytest.raises(DockerError, match="10.9.8.0/30 has room for 1 hosts, not 2"):
        host_addresses("10.9.8.0/30", "10.9.8.1", ["algo-1", "algo-2"])


def test_stdout_to_stderr_moves_both_levels() -> None:
    """sys.stdout and file descriptor 1 (which a child process inherits) both reach stderr meanwhile."""
    script = (
        "import os, subprocess, sys\n"
        "from smbyoc.cli.status_line import stdout_to_stderr\n"
        "print('before')\n"
        "with stdout_to_stderr():\n"
        "    print('python level')\n"
        "    os.write(1, b'fd level\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child\")'], check=True)\n"
        "print('after')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert proc.stdout.split() == ["before", "after"]
    assert proc.stderr.split("\n")[:3] == ["python level", "fd level", "child"]


def test_stdout_to_stderr_with_a_replaced_sys_stdout() -> None:
    """Under a test runner sys.stdout is no file descriptor: the Python level still moves."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), stdout_to_stderr():
        print("inside")
    assert (out.getvalue(), err.getvalue()) == ("", "inside\n")
