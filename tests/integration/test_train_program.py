"""End-to-end runs of the real ``train`` console script as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TRAIN = Path(sys.executable).with_name("train")


def make_job(tmp_path, hyperparameters=None, files=None, resource=None, inputs=None):
    base = tmp_path / "ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps(resource or {"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    (config / "inputdataconfig.json").write_text(json.dumps(inputs or {}))
    code = base / "code"
    code.mkdir()
    for name, text in (files or {}).items():
        (code / name).write_text(textwrap.dedent(text))
    return base


def env_for(base, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "SMBYOC_"))}
    env.update(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME="job-1", **extra)
    return env


def train(base, timeout=120, **extra):
    return subprocess.run([str(TRAIN)], check=False, env=env_for(base, **extra), capture_output=True, text=True,
                          timeout=timeout)


def failure(base):
    return (base / "output" / "failure").read_text()


def test_success_passes_sm_variables_and_arguments(tmp_path):
    base = make_job(tmp_path, {"epochs": "10", "lr": "0.5", "sagemaker_program": '"train.py"'},
                    {"train.py": """
                        import json, os, sys
                        out = {"argv": sys.argv[1:], "cwd": os.getcwd(),
                               "sm": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
                               "path0": os.environ["PYTHONPATH"].split(os.pathsep)[0]}
                        with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
                            json.dump(out, f)
                        print("training done")
                    """}, inputs={"train": {"TrainingInputMode": "File"}})
    (base / "model").mkdir()
    proc = train(base)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((base / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--epochs", "10", "--lr", "0.5"]
    assert seen["cwd"] == str(base / "code") and seen["path0"] == str(base / "code")
    assert seen["sm"]["SM_HP_EPOCHS"] == "10" and seen["sm"]["SM_CHANNEL_TRAIN"] == str(base / "input/data/train")
    assert json.loads(seen["sm"]["SM_USER_ARGS"]) == ["--epochs", "10", "--lr", "0.5"]
    assert "training done" in proc.stdout
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert '"user_entry_point": "train.py"' in proc.stderr  # the one startup line


def test_user_exception_writes_failure_and_exits_1(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": """
        import sys
        print("some progress", file=sys.stderr)
        def load():
            raise ValueError("learning rate must be positive")
        load()
    """})
    proc = train(base)
    assert proc.returncode == 1
    text = failure(base)
    assert text.startswith("ValueError: learning rate must be positive\ntrain.py exited with status 1")
    reason = text[:1024]
    assert "Traceback (most recent call last)" in reason and "in load" in reason
    assert "learning rate must be positive" in proc.stderr  # streamed live too
    assert not (base / "output" / "success").exists()


def test_exit_status_propagated(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": "import sys; sys.exit(7)\n"})
    proc = train(base)
    assert proc.returncode == 7
    assert "train.py exited with status 7" in failure(base)


def test_shell_entry_point_from_env(tmp_path):
    base = make_job(tmp_path, {"epochs": "2"}, {"run.sh": """\
        #!/bin/sh
        echo "args: $*" > "$SM_OUTPUT_DATA_DIR/args.txt"
    """})
    (base / "output" / "data").mkdir(parents=True)
    proc = train(base, SAGEMAKER_PROGRAM="run.sh")
    assert proc.returncode == 0, proc.stderr
    assert (base / "output" / "data" / "args.txt").read_text() == "args: --epochs 2\n"


def test_python_package_is_installed_then_run_as_module(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {
        "pyproject.toml": """\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "smbyoc-test-pkg"
            version = "1.2.3"
            [tool.setuptools]
            py-modules = ["train"]
        """,
        "train.py": """
            import importlib.metadata, os
            print("running as", __name__)
            with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "v"), "w") as f:
                f.write(__name__ + " " + importlib.metadata.version("smbyoc-test-pkg"))
        """})
    (base / "output" / "data").mkdir(parents=True)
    target = tmp_path / "site"
    # Install into a throwaway --target (not the test venv), offline, with the venv's setuptools.
    proc = train(base, PIP_TARGET=str(target), PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1",
                 PYTHONPATH=str(target))
    assert proc.returncode == 0, proc.stderr
    assert (base / "output" / "data" / "v").read_text() == "__main__ 1.2.3"
    assert any(p.name.startswith("smbyoc_test_pkg-1.2.3") for p in target.iterdir())


def test_requirements_forbidden_is_one_clear_error(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"},
                    {"train.py": "print('never')\n", "requirements.txt": "numpy\n"})
    proc = train(base, SMBYOC_ALLOW_REQUIREMENTS_INSTALL="false")
    assert proc.returncode == 1
    text = failure(base)
    assert text.startswith("UserCodeError: ")
    assert "forbidden" in text and "Dockerfile" in text and "requirements.txt" in text
    assert "never" not in proc.stdout


def test_failed_install_mentions_network_isolation(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"},
                    {"train.py": "print('never')\n", "requirements.txt": "smbyoc-no-such-package-xyz\n"})
    proc = train(base, PIP_NO_INDEX="1")
    assert proc.returncode == 1
    reason = failure(base)[:1024]
    assert reason.startswith("InstallRequirementsError: ")
    assert "network isolation" in reason and "smbyoc-no-such-package-xyz" in reason


def test_missing_program(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "nothere.py"}, {"train.py": ""})
    proc = train(base)
    assert proc.returncode == 127
    assert "'nothere.py' not found" in failure(base) and "train.py" in failure(base)


def test_no_program_at_all(tmp_path):
    proc = train(make_job(tmp_path))
    assert proc.returncode == 127
    assert "SAGEMAKER_PROGRAM" in failure(tmp_path / "ml")


def test_non_executable_command(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "bin"})
    (base / "code" / "bin").mkdir()
    proc = train(base)
    assert proc.returncode == 126
    assert "cannot be executed" in failure(base)


def test_command_without_execute_bit_is_made_executable(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "run"}, {"run": "#!/bin/sh\nexit 5\n"})
    (base / "code" / "run").chmod(0o644)
    proc = train(base)
    assert proc.returncode == 5
    assert "added the execute permission" in proc.stderr


def test_malformed_config_is_one_clear_line(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": ""})
    (base / "input" / "config" / "hyperparameters.json").write_text('{"epochs": 10')
    proc = train(base)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "FAILURE" in line]
    assert len(errors) == 1 and "hyperparameters.json" in errors[0]
    assert failure(base).startswith("ConfigError: ") and "hyperparameters.json" in failure(base)


def test_typed_hyperparameter_errors_list_every_bad_key(tmp_path):
    base = make_job(tmp_path, {"epochs": "ten", "lr": "-1", "sagemaker_program": "train.py", "optimiser": "x"}, {
        "train.py": "print('never')\n",
        "hyperparameters.schema.json": json.dumps({
            "epochs": {"type": "int"}, "lr": {"type": "float", "minimum": 0}, "optimizer": "str"}),
    })
    proc = train(base)
    assert proc.returncode == 1
    reason = failure(base)[:1024]
    assert reason.startswith("HyperparameterError: 3 invalid hyperparameters")
    for key in ("epochs", "lr", "optimiser"):
        assert key in reason


def test_sigterm_is_forwarded_and_checkpoint_saved(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": """
        import os, signal, sys, time
        from smbyoc.training.checkpoints import checkpoint_dir, save_checkpoint
        def on_term(signum, frame):
            save_checkpoint(checkpoint_dir() / "last.ckpt", lambda f: f.write(b"state"))
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open(os.path.join(os.environ["SM_OUTPUT_DIR"], "ready"), "w").close()
        while True:
            time.sleep(0.05)
    """})
    proc = subprocess.Popen([str(TRAIN)], env=env_for(base), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (base / "output" / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (base / "checkpoints" / "last.ckpt").read_bytes() == b"state"
    assert (base / "output" / "success").exists()
    assert b"forwarding SIGTERM" in err


def test_program_killed_by_sigterm_reports_143(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "run.sh"}, {"run.sh": """\
        #!/bin/sh
        touch "$SM_OUTPUT_DIR/ready"
        exec sleep 60
    """})
    proc = subprocess.Popen([str(TRAIN)], env=env_for(base), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (base / "output" / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "killed by SIGTERM" in failure(base)


def test_sigterm_while_requirements_install_is_a_stop(tmp_path):
    import socket

    base = make_job(tmp_path, {"sagemaker_program": "train.py"},
                    {"train.py": "print('never')\n", "requirements.txt": "smbyoc-slow-package-xyz\n"})
    with socket.socket() as index:  # a package index that takes the connection and never answers
        index.bind(("127.0.0.1", 0))
        index.listen()
        env = {**env_for(base), "PIP_INDEX_URL": f"http://127.0.0.1:{index.getsockname()[1]}/simple",
               "PIP_TIMEOUT": "60", "PIP_RETRIES": "0", "PIP_TARGET": str(tmp_path / "site")}
        proc = subprocess.Popen([str(TRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            index.settimeout(60)
            connection, _ = index.accept()  # pip is installing
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
            connection.close()
        finally:
            proc.kill()
    assert proc.returncode == 143
    assert failure(base).strip() == "Stopped: train received SIGTERM before the program finished starting"


def test_programs_own_failure_file_is_kept(tmp_path):
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": """
        import os, sys
        with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
            f.write("DataError: channel train is empty")
        sys.exit(3)
    """})
    proc = train(base)
    assert proc.returncode == 3
    assert failure(base) == "DataError: channel train is empty"


def test_sagemaker_training_module(tmp_path):
    base = make_job(tmp_path)
    (tmp_path / "fw.py").write_text(textwrap.dedent("""
        import os
        def main():
            open(os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "called"), "w").close()
        def broken():
            raise RuntimeError("framework exploded")
    """))
    proc = train(base, SAGEMAKER_TRAINING_MODULE="fw:main", PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (base / "called").exists() and (base / "output" / "success").exists()
    base2 = make_job(tmp_path / "b")
    proc = train(base2, SAGEMAKER_TRAINING_MODULE="fw:broken", PYTHONPATH=str(tmp_path))
    assert proc.returncode == 1
    assert failure(base2).startswith("RuntimeError: framework exploded")


def test_torchrun_launcher_two_processes_gloo(tmp_path):
    import torch  # noqa: F401  (a dev dependency: missing is a failure, not a skip)
    base = make_job(tmp_path, {"sagemaker_program": "train.py"}, {"train.py": """
        import os
        import torch
        import torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.tensor([dist.get_rank() + 1.0])
        dist.all_reduce(t)
        with open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank{dist.get_rank()}"), "w") as f:
            f.write(f"{dist.get_world_size()} {t.item()}")
        dist.destroy_process_group()
    """})
    (base / "model").mkdir()
    port = _free_port()
    proc = train(base, timeout=240, SMBYOC_LAUNCHER="torchrun", SMBYOC_NPROC_PER_NODE="2",
                 SMBYOC_MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stderr
    assert (base / "model" / "rank0").read_text() == "2 3.0"
    assert (base / "model" / "rank1").read_text() == "2 3.0"


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
