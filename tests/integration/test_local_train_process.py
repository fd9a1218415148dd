"""End-to-end: `smbyoc local-train --mode process` runs real programs through the real `train` runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def run_cli(*args: str, cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


CHECKING_PROGRAM = """
    import json, os, sys
    from pathlib import Path
    base = Path(os.environ["SAGEMAKER_BASE_DIR"])
    cfg = base / "input" / "config"
    rc = json.loads((cfg / "resourceconfig.json").read_text())
    assert rc["current_host"] == "algo-1" and rc["hosts"] == ["algo-1"], rc
    assert rc["current_instance_type"] == "ml.m5.large", rc
    assert rc["network_interface_name"] == "eth0", rc
    idc = json.loads((cfg / "inputdataconfig.json").read_text())
    assert idc == {"train": {"ContentType": "text/csv", "TrainingInputMode": "File",
                             "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}}, idc
    hps = json.loads((cfg / "hyperparameters.json").read_text())
    assert all(isinstance(v, str) for v in hps.values()), hps
    assert os.environ["SM_HP_EPOCHS"] == "3", os.environ["SM_HP_EPOCHS"]
    assert os.environ["SM_CHANNEL_TRAIN"] == str(base / "input/data/train")
    assert os.environ["TRAINING_JOB_NAME"] == "it-success"
    assert os.environ["TRAINING_JOB_ARN"].endswith(":training-job/it-success")
    assert sys.argv[1:] == ["--epochs", "3", "--optimizer", "adam"], sys.argv
    rows = (Path(os.environ["SM_CHANNEL_TRAIN"]) / "rows.csv").read_text()
    Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text("rows=" + str(len(rows.splitlines())))
    Path(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.json").write_text('{"loss": 0.1}')
    print("trained")
"""


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    write(tmp_path / "data" / "rows.csv", "1,2\n3,4\n5,6\n")
    return tmp_path


def test_success_writes_artifacts_and_reports_completed(workdir: Path) -> None:
    write(workdir / "src" / "train.py", CHECKING_PROGRAM)
    proc = run_cli(
        "local-train", "--mode", "process", "-e", "train.py", "-s", "src", "-c", "train=data",
        "--content-type", "train=text/csv", "-H", "epochs=3", "--hyperparameters", '{"optimizer": "adam"}',
        "--instance-type", "ml.m5.large", "--job-name", "it-success", "-o", "out", "--json", cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "trained" in proc.stdout + proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["TrainingJobStatus"] == "Completed"
    assert result["TrainingJobName"] == "it-success"
    assert "FailureReason" not in result
    model = workdir / "out" / "it-success" / "output" / "model.tar.gz"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == model.as_uri()
    with tarfile.open(model) as tar:
        assert tar.getnames() == ["model.txt"]
        assert tar.extractfile("model.txt").read() == b"rows=3"  # type: ignore[union-attr]
    with tarfile.open(model.with_name("output.tar.gz")) as tar:
        assert tar.getnames() == ["metrics.json"]


def test_user_exception_fails_with_reason_and_status(workdir: Path) -> None:
    write(workdir / "src" / "train.py", """
        import sys
        print("about to fail", file=sys.stderr)
        raise ValueError("learning rate must be positive")
    """)
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "it-fail",
                   "-o", "out", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert "Training job it-fail: Failed" in proc.stderr
    reason = proc.stderr.split("FailureReason: ", 1)[1]
    assert "ValueError" in reason[:1024]
    assert "learning rate must be positive" in reason[:1024]
    # Artifacts are still collected so the user can inspect partial output.
    assert (workdir / "out" / "it-fail" / "output" / "model.tar.gz").is_file()


def test_exit_status_is_propagated(workdir: Path) -> None:
    write(workdir / "src" / "train.py", "import sys; sys.exit(7)\n")
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "-o", "out", "--json",
                   cwd=workdir)
    assert proc.returncode == 7
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["TrainingJobStatus"] == "Failed" and result["ExitCode"] == 7


def test_own_train_program_with_training_env(workdir: Path) -> None:
    """The classic pattern: the image's `train` is the user's program, using smbyoc.training.TrainingEnv."""
    program = write(workdir / "bin" / "train", f"""\
        #!{sys.executable}
        from smbyoc.training import TrainingEnv
        env = TrainingEnv.from_env()
        assert env.job_name == "own-train", env.job_name
        data = (env.channel_dir("train") / "rows.csv").read_text()
        (env.paths.model_dir / "n").write_text(str(len(data.splitlines())) + " " + env.hyperparameters_raw["k"])
    """)
    program.chmod(0o755)
    proc = run_cli("local-train", "--mode", "process", "--train-command", str(program), "-c", "train=data",
                   "-H", "k=v", "--job-name", "own-train", "-o", "out", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(workdir / "out" / "own-train" / "output" / "model.tar.gz") as tar:
        assert tar.extractfile("n").read() == b"3 v"  # type: ignore[union-attr]


def test_ctrl_c_stops_like_stop_training_job(workdir: Path) -> None:
    write(workdir / "src" / "train.py", """
        import os, signal, sys, time
        from pathlib import Path
        def on_term(signum, frame):
            Path(os.environ["SM_MODEL_DIR"], "checkpoint").write_text("saved on SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        Path(os.environ["SAGEMAKER_BASE_DIR"], "..", "..", "ready").resolve()
        print("READY", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [*SMBYOC, "local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "it-stop",
         "-o", "out"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "READY" in line or time.monotonic() > deadline:
            break
    assert any("READY" in line for line in lines), "".join(lines)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "Stopped" in rest
    with tarfile.open(workdir / "out" / "it-stop" / "output" / "model.tar.gz") as tar:
        assert tar.extractfile("checkpoint").read() == b"saved on SIGTERM"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "train=does-not-exist"], "channel 'train' path 'does-not-exist': no such file or directory"),
        (["-c", "train"], "--channel 'train': expected KEY=VALUE"),
        (["-c", "train=data", "--content-type", "valid=text/csv"], "--content-type valid: no such channel"),
        (["--input-mode", "Stream"], "--input-mode job=Stream"),
        (["-H", "noequals"], "-H 'noequals': expected KEY=VALUE"),
        (["--instance-type", "ml.x9.large"], "instance type 'ml.x9.large'"),
        (["--instance-count", "0"], "instance count 0"),
        (["--job-name", "no_underscores"], "job name 'no_underscores'"),
        (["--hyperparameters", "{bad"], "--hyperparameters: not valid JSON"),
        (["-e", "train.py", "-s", "missing-src"], "--source-dir missing-src: no such file or directory"),
        (["--env", "9X=1"], "environment variable '9X'"),
    ],
)
def test_bad_input_one_line_and_nothing_written(workdir: Path, args: list[str], message: str) -> None:
    proc = run_cli("local-train", "--mode", "process", "-o", "out", *args, cwd=workdir, timeout=60)
    assert proc.returncode != 0
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, proc.stderr
    assert message in error_lines[0], proc.stderr
    assert not (workdir / "out").exists()


def test_missing_program_fails_clearly(workdir: Path) -> None:
    (workdir / "src").mkdir()
    proc = run_cli("local-train", "--mode", "process", "-e", "nope.py", "-s", "src", "-o", "out", "--json",
                   cwd=workdir)
    assert proc.returncode != 0
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["TrainingJobStatus"] == "Failed"
    assert "nope.py" in result["FailureReason"]


def test_no_leftover_temporary_trees(workdir: Path, tmp_path_factory) -> None:
    tmp = workdir / "tmp"
    tmp.mkdir()
    write(workdir / "src" / "train.py", "print('ok')\n")
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = run_cli("local-train", "--mode", "process", "-e", "train.py", "-s", "src", "-o", "out", cwd=workdir,
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp.iterdir()) == []


def test_smbyoc_stop_behaves_as_stop_training_job(workdir: Path) -> None:
    write(workdir / "src" / "train.py", """
        import os, signal, sys, time
        from pathlib import Path
        def on_term(signum, frame):
            Path(os.environ["SM_MODEL_DIR"], "checkpoint").write_text("saved on SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("READY", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "SMBYOC_STATE_DIR": str(workdir / "state")}
    proc = subprocess.Popen(
        [*SMBYOC, "local-train", "--mode", "process", "-e", "train.py", "-s", "src", "--job-name", "it-smbyoc-stop",
         "-o", "out"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "READY" in line:
            break
    listed = subprocess.run([*SMBYOC, "stop", "--list"], capture_output=True, text=True, env=env, timeout=30)
    assert listed.stdout.startswith("it-smbyoc-stop\tpid "), listed
    unknown = subprocess.run([*SMBYOC, "stop", "nope"], capture_output=True, text=True, env=env, timeout=30)
    assert unknown.returncode != 0
    assert "job 'nope': no running job of that name (running: it-smbyoc-stop)" in unknown.stderr
    stopped = subprocess.run([*SMBYOC, "stop", "it-smbyoc-stop"], capture_output=True, text=True, env=env, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "Stopped" in rest
    with tarfile.open(workdir / "out" / "it-smbyoc-stop" / "output" / "model.tar.gz") as tar:
        assert tar.extractfile("checkpoint").read() == b"saved on SIGTERM"  # type: ignore[union-attr]
    assert not list((workdir / "state" / "jobs").glob("*.json"))
