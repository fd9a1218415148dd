"""What `smbyoc local-train` shows: the JSON alone on stdout under --json, SageMaker's FailureReason shape,
and a failure file's control characters escaped before they reach the terminal (process mode, real
programs run through the real `train` runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]

CHATTY_PROGRAM = """
    import os, sys
    print("hello from print")
    sys.stdout.flush()
    os.write(1, b"hello from file descriptor 1\\n")
    print("hello on stderr", file=sys.stderr)
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as f:
        f.write("ok")
"""

#: Clears the screen, sets the window title, rings the bell, returns the carriage, reverses the text.
HOSTILE_FAILURE = "\x1b[2J\x1b]0;pwned\x07Boom\r\nsecond line\tend \u202eevil\x9b"

HOSTILE_PROGRAM = f"""
    import os, sys
    with open(os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "output", "failure"), "w") as f:
        f.write({HOSTILE_FAILURE!r})
    sys.exit(4)
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def program(root: Path, text: str) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "train.py").write_text(textwrap.dedent(text))
    return root / "src"


def test_json_is_alone_on_stdout_and_the_logs_go_to_stderr(tmp_path: Path) -> None:
    program(tmp_path, CHATTY_PROGRAM)
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "rep-json",
                   "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole of stdout: what `| jq` gets
    assert result["TrainingJobStatus"] == "Completed" and result["TrainingJobName"] == "rep-json"
    for line in ("hello from print", "hello from file descriptor 1", "hello on stderr"):
        assert line in proc.stderr
    # Without --json the program's own output stays on stdout, as before.
    plain = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "rep-plain",
                    "-o", "out", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "hello from print" in plain.stdout and "hello from file descriptor 1" in plain.stdout


def test_failure_reason_is_sagemakers_and_control_characters_are_escaped(tmp_path: Path) -> None:
    program(tmp_path, HOSTILE_PROGRAM)
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "rep-esc",
                   "-o", "out", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\x9b"):
        assert raw not in proc.stderr + proc.stdout, repr(raw)
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("FailureReason: ")]
    assert line == "FailureReason: AlgorithmError: \\x1b[2J\\x1b]0;pwned\\x07Boom\\x0d", repr(line)
    following = proc.stderr.split(line + "\n", 1)[1].splitlines()[0]
    assert following == "second line\tend \\u202eevil\\x9b", repr(following)  # newline and tab kept

    as_json = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "rep-esc2",
                      "-o", "out", "--json", cwd=tmp_path)
    assert as_json.returncode == 4, as_json.stderr
    assert "\x1b" not in as_json.stdout  # JSON escapes it ...
    result = json.loads(as_json.stdout)
    assert result["FailureReason"] == "AlgorithmError: " + HOSTILE_FAILURE  # ... and keeps the raw text
    assert result["ExitCode"] == 4


def test_failure_reason_without_a_failure_file_and_its_1024_character_limit(tmp_path: Path) -> None:
    proc = run_cli("local-train", "--mode", "process", "--train-command",
                   f"{sys.executable} -c \"import sys; sys.exit(6)\"", "--job-name", "rep-nofile", "-o", "out",
                   "--json", cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr
    assert json.loads(proc.stdout)["FailureReason"] == (
        "AlgorithmError: the training program exited with status 6 and wrote no /opt/ml/output/failure")
    program(tmp_path, """
        import os, sys
        with open(os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "output", "failure"), "w") as f:
            f.write("x" * 2000)
        sys.exit(1)
    """)
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "rep-long",
                   "-o", "out", "--json", cwd=tmp_path)
    reason = json.loads(proc.stdout)["FailureReason"]
    assert reason == ("AlgorithmError: " + "x" * 2000)[:1024]  # DescribeTrainingJob's FailureReason: ≤ 1024
