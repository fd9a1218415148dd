"""Run the default example's train.py for real, in a subprocess, against a temporary SageMaker tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smbyoc.examples import default_example

pytestmark = pytest.mark.integration

EXAMPLE = default_example()
TRAIN = EXAMPLE.source_dir / EXAMPLE.entry_point
METRIC_LINE = re.compile(
    r"epoch=(\d+) train_loss=([0-9.]+) train_accuracy=([0-9.]+) val_loss=([0-9.]+) val_accuracy=([0-9.]+)"
)
DEADLINE_S = 120


@dataclass
class Run:
    base: Path
    returncode: int
    log: str

    @property
    def epochs(self) -> list[int]:
        return [int(m.group(1)) for m in METRIC_LINE.finditer(self.log)]

    def metrics(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.base / "output" / "data" / "metrics.json").read_text())
        return data

    def model_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.base / "model" / "model.json").read_text())
        return data


def make_tree(base: Path, *, sm_vars: bool) -> dict[str, str]:
    """A /opt/ml-style tree under ``base``; with ``sm_vars`` the paths are also given as SM_* variables."""
    for name, source in EXAMPLE.channels.items():
        shutil.copytree(source, base / "input" / "data" / name)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    environ["SAGEMAKER_BASE_DIR"] = str(base)
    environ["PYTHONUNBUFFERED"] = "1"
    if sm_vars:
        environ |= {
            "SM_CHANNEL_TRAIN": str(base / "input" / "data" / "train"),
            "SM_CHANNEL_VALIDATION": str(base / "input" / "data" / "validation"),
            "SM_MODEL_DIR": str(base / "model"),
            "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"),
        }
    return environ


def run_train(base: Path, args: list[str], environ: dict[str, str]) -> Run:
    done = subprocess.run(
        [sys.executable, str(TRAIN), *args],
        check=False,
        env=environ,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    return Run(base, done.returncode, done.stdout + done.stderr)


def fresh_run(base: Path, epochs: int, *, sm_vars: bool = True) -> Run:
    return run_train(base, ["--epochs", str(epochs)], make_tree(base, sm_vars=sm_vars))


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = fresh_run(tmp_path_factory.mktemp("two"), 2)
    assert run.returncode == 0, run.log
    return run


@pytest.fixture(scope="module")
def four_epochs(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = fresh_run(tmp_path_factory.mktemp("four"), 4)
    assert run.returncode == 0, run.log
    return run


def validation_features() -> tuple[np.ndarray, list[str]]:
    lines = (EXAMPLE.channels["validation"] / "validation.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    return np.array([[float(v) for v in row[:-1]] for row in rows], dtype=np.float32), [row[-1] for row in rows]


def test_two_epochs_write_every_artifact(two_epochs: Run) -> None:
    assert two_epochs.epochs == [1, 2]
    assert "resumed" not in two_epochs.log
    model = two_epochs.model_json()
    assert model["completed"] is True and model["epochs_completed"] == 2
    assert model["input"] == {"name": "input", "shape": [None, 8], "dtype": "float32"}
    assert model["class_names"] == ["bearing_wear", "electrical_fault", "normal", "overheating"]
    assert len(model["feature_names"]) == 8
    metrics = two_epochs.metrics()
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["final"] == model["metrics"]
    checkpoints = sorted(p.name for p in (two_epochs.base / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-epoch-0001.pt", "checkpoint-epoch-0002.pt"]
    assert not [p for p in (two_epochs.base / "model").iterdir() if p.name.startswith(".")]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_and_onnx_agree_with_a_dynamic_batch(two_epochs: Run) -> None:
    import onnxruntime as ort
    import torch

    features, labels = validation_features()
    scripted = torch.jit.load(str(two_epochs.base / "model" / "model.pt"))  # type: ignore[no-untyped-call]
    session = ort.InferenceSession(str(two_epochs.base / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].type == "tensor(float)"
    for batch in (features[:1], features[:7], features):
        with torch.no_grad():
            expected = scripted(torch.from_numpy(batch)).numpy()
        got = session.run(None, {"input": batch})[0]
        assert got.shape == (len(batch), 4)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    # and the saved model is the one whose validation accuracy was logged
    class_names = two_epochs.model_json()["class_names"]
    predicted = [class_names[i] for i in session.run(None, {"input": features})[0].argmax(axis=1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    assert accuracy == pytest.approx(two_epochs.model_json()["metrics"]["val_accuracy"], abs=1e-6)


def test_default_hyperparameters_reach_a_good_accuracy_from_opt_ml_paths_only(tmp_path: Path) -> None:
    # no SM_* variables at all: the /opt/ml layout under SAGEMAKER_BASE_DIR and hyperparameters.json
    environ = make_tree(tmp_path, sm_vars=False)
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps(EXAMPLE.hyperparameters | {"sagemaker_program": '"train.py"'})
    )
    run = run_train(tmp_path, [], environ)
    assert run.returncode == 0, run.log
    assert run.epochs == list(range(1, int(EXAMPLE.hyperparameters["epochs"]) + 1))
    assert run.model_json()["metrics"]["val_accuracy"] > 0.95
    assert (tmp_path / "model" / "model.onnx").is_file()
    assert (tmp_path / "output" / "data" / "metrics.json").is_file()


def test_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run(
    two_epochs: Run, four_epochs: Run, tmp_path: Path
) -> None:
    environ = make_tree(tmp_path, sm_vars=True)
    environ["SM_CHECKPOINT_DIR"] = str(tmp_path / "my-checkpoints")
    shutil.copytree(two_epochs.base / "checkpoints", tmp_path / "my-checkpoints")
    resumed = run_train(tmp_path, ["--epochs", "4"], environ)
    assert resumed.returncode == 0, resumed.log
    assert "resumed from epoch 2" in resumed.log
    assert resumed.epochs == [3, 4]
    assert resumed.model_json()["epochs_completed"] == 4
    assert [h["epoch"] for h in resumed.metrics()["history"]] == [1, 2, 3, 4]
    assert_same_history(resumed.metrics(), four_epochs.metrics())
    assert (tmp_path / "my-checkpoints" / "checkpoint-epoch-0004.pt").is_file()


def assert_same_history(a: dict[str, Any], b: dict[str, Any]) -> None:
    history_a, history_b = a["history"], b["history"]
    assert isinstance(history_a, list) and isinstance(history_b, list) and len(history_a) == len(history_b)
    for x, y in zip(history_a, history_b, strict=True):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-7)
    assert a["final"] == pytest.approx(b["final"], rel=1e-6, abs=1e-7)


def test_sigterm_saves_a_checkpoint_and_the_job_resumes(tmp_path: Path) -> None:
    environ = make_tree(tmp_path, sm_vars=True)
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "--epochs", "100000", "--checkpoint-every", "1000"],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(DEADLINE_S, process.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if re.search(r"epoch=2 ", line):
                process.send_signal(signal.SIGTERM)
                break
        lines.extend(process.stdout)
        returncode = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    log = "".join(lines)
    assert returncode == 0, log
    stopped = re.search(r"SIGTERM received: stopped after epoch (\d+) of 100000", log)
    assert stopped, log
    last = int(stopped.group(1))
    assert 2 <= last < 1000  # stopped promptly, and between --checkpoint-every boundaries
    assert (tmp_path / "checkpoints" / f"checkpoint-epoch-{last:04d}.pt").is_file()
    model = json.loads((tmp_path / "model" / "model.json").read_text())
    assert (model["completed"], model["epochs_completed"]) == (False, last)
    assert (tmp_path / "model" / "model.onnx").is_file()

    resumed = run_train(tmp_path, ["--epochs", str(last + 1)], environ)
    assert resumed.returncode == 0, resumed.log
    assert f"resumed from epoch {last}" in resumed.log
    assert resumed.epochs == [last + 1]
    assert resumed.model_json()["completed"] is True


def test_bad_input_is_one_line_and_a_failure_file(tmp_path: Path) -> None:
    environ = make_tree(tmp_path, sm_vars=True)
    with (tmp_path / "input" / "data" / "train" / "train.csv").open("a") as handle:
        handle.write("1,2,3,4,5,6,7,not-a-number,normal\n")
    run = run_train(tmp_path, ["--epochs", "1"], environ)
    assert run.returncode == 1
    assert "Traceback" not in run.log
    failure = (tmp_path / "output" / "failure").read_text()
    assert re.fullmatch(r".*train\.csv:2402: non-numeric feature value in .*\n", failure)
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_inference_handler_serves_the_trained_model_without_torch(two_epochs: Run) -> None:
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(EXAMPLE.source_dir)!r})\n"
        "import inference as h\n"
        f"model = h.model_fn({str(two_epochs.base / 'model')!r})\n"
        "body = sys.stdin.read()\n"
        "out, ctype = h.output_fn(h.predict_fn(h.input_fn(body, 'text/csv'), model), 'application/json')\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ctype': ctype, 'out': json.loads(out)}))\n"
    )
    csv_body = (EXAMPLE.channels["validation"] / "validation.csv").read_text()  # header and label column included
    done = subprocess.run([sys.executable, "-c", code], input=csv_body, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["torch"] is False and result["ctype"] == "application/json"
    _, labels = validation_features()
    predicted = [p["label"] for p in result["out"]["predictions"]]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    assert accuracy == pytest.approx(two_epochs.model_json()["metrics"]["val_accuracy"], abs=1e-6)
