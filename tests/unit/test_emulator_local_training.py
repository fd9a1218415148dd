"""The library call behind `local-train`: `smbyoc.emulator.run_local_training` runs a real process-mode
job through the real `train` runtime with no click, resolves the defaults the CLI used to, and runs each
check (spec validation, backend preflight) exactly once along `local-train`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.local_training import ChannelSetting, LocalTrainingJob, run_local_training, training_spec
from smbyoc.emulator.process_backend import ProcessBackend
from smbyoc.errors import ConfigError

PROGRAM = """
    import json, os, sys
    from pathlib import Path
    base = Path(os.environ["SAGEMAKER_BASE_DIR"])
    idc = json.loads((base / "input" / "config" / "inputdataconfig.json").read_text())
    rows = (Path(os.environ["SM_CHANNEL_TRAIN"]) / "rows.csv").read_text().splitlines()
    Path(os.environ["SM_MODEL_DIR"], "model.json").write_text(json.dumps(
        {"rows": len(rows), "argv": sys.argv[1:], "idc": idc, "job": os.environ["TRAINING_JOB_NAME"]}))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write(tmp_path / "src" / "train.py", PROGRAM)
    write(tmp_path / "data" / "rows.csv", "1,2\n3,4\n5,6\n")
    return tmp_path


def counting(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], owner: Any, name: str) -> None:
    """Count the calls of ``owner.name`` (the real one still runs)."""
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[f"{getattr(owner, '__name__', owner)}.{name}"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_a_process_job_runs_from_python_with_no_click(project: Path) -> None:
    started: list[TrainingJobSpec] = []
    statuses: list[str] = []
    job = LocalTrainingJob(
        mode="process", entry_point="train.py", source_dir=project / "src",
        channels=(("train", project / "data"),), content_types={"train": "text/csv"},
        channel_settings=(ChannelSetting("distribution", "ShardedByS3Key"),
                          ChannelSetting("distribution", "FullyReplicated", channel="train")),
        hyperparameters={"epochs": 3, "optimizer": "adam"}, job_name="lib-run", output_dir=project / "out",
    )
    result = run_local_training(job, on_start=started.append,
                                on_status=lambda primary, secondary: statuses.append(secondary))
    assert result.succeeded, result.failure_reason
    assert [spec.job_name for spec in started] == ["lib-run"]
    assert statuses == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    described = result.describe()
    assert described["TrainingJobStatus"] == "Completed" and described["TrainingJobName"] == "lib-run"
    assert described["HyperParameters"]["epochs"] == "3"  # str() on the wire, as the generic Estimator
    assert described["HyperParameters"]["sagemaker_program"] == '"train.py"'
    with tarfile.open(project / "out" / "lib-run" / "output" / "model.tar.gz") as tar:
        member = tar.extractfile("model.json")
        assert member is not None
        model = json.loads(member.read())
    assert model["rows"] == 3 and model["job"] == "lib-run"
    assert model["argv"] == ["--epochs", "3", "--optimizer", "adam"]
    assert model["idc"] == {"train": {"ContentType": "text/csv", "TrainingInputMode": "File",
                                      "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}}


def test_local_train_validates_and_preflights_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.cli import _register, cli

    _register()
    calls: Counter[str] = Counter()
    counting(monkeypatch, calls, TrainingJobSpec, "validate")
    counting(monkeypatch, calls, ProcessBackend, "preflight")
    monkeypatch.chdir(project)
    outcome = CliRunner().invoke(cli, ["local-train", "--mode", "process", "-e", "train.py", "-s", "src",
                                       "-c", "train=data", "--job-name", "once", "-o", "out"])
    assert outcome.exit_code == 0, outcome.output
    assert (project / "out" / "once" / "output" / "model.tar.gz").is_file()
    assert calls == {"TrainingJobSpec.validate": 1, "ProcessBackend.preflight": 1}


def test_the_library_checks_once_and_refuses_before_anything_starts(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    counting(monkeypatch, calls, TrainingJobSpec, "validate")
    counting(monkeypatch, calls, ProcessBackend, "preflight")
    started: list[TrainingJobSpec] = []
    job = LocalTrainingJob(mode="process", train_command=(sys.executable, "-c", "pass"), instance_count=2,
                           output_dir=project / "out")
    with pytest.raises(ConfigError, match="--instance-count 2: process mode runs a single host"):
        run_local_training(job, on_start=started.append)
    assert calls == {"TrainingJobSpec.validate": 1, "ProcessBackend.preflight": 1}
    assert started == [] and not (project / "out").exists()


@pytest.mark.parametrize(("job", "message"), [
    (LocalTrainingJob(mode="process", gpus=1), "--gpus: only for --mode docker"),
    (LocalTrainingJob(mode="process", user="1000"), "--user: only for --mode docker"),
    (LocalTrainingJob(mode="docker", train_command=("./train",)), "--train-command: only for --mode process"),
    (LocalTrainingJob(mode="process", train_command=("bin/missing-train",)),
     "--train-command bin/missing-train: no such file"),
    (LocalTrainingJob(mode="process", content_types={"nope": "text/csv"}), "--content-type nope: no such channel"),
    (LocalTrainingJob(mode="process", channel_settings=(ChannelSetting("input_mode", "Pipe", "nope"),)),
     "--input-mode nope=Pipe: no such channel (channels: train, validation)"),
    (LocalTrainingJob(mode="process", channel_settings=(ChannelSetting("compression", "Zip"),)),
     "--compression job=Zip: expected one of None, Gzip"),
    (LocalTrainingJob(mode="process", channel_settings=(ChannelSetting("colour", "red"),)),
     "channel setting 'colour': expected one of input_mode"),
])
def test_bad_requests_are_one_line(tmp_path: Path, job: LocalTrainingJob, message: str) -> None:
    job = dataclasses.replace(job, output_dir=tmp_path / "out")
    with pytest.raises(ConfigError) as caught:
        run_local_training(job)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_defaults_resolve_to_the_bundled_example() -> None:
    from smbyoc.examples import default_example

    example = default_example()
    job = LocalTrainingJob(mode="process", hyperparameters={"epochs": 1},
                           channel_settings=(ChannelSetting("input_mode", "Pipe", channel="train"),))
    spec, code_dir = training_spec(job)
    assert code_dir == example.source_dir
    assert spec.job_name.startswith("train-")
    assert spec.hyperparameters["sagemaker_program"] == json.dumps(example.entry_point)
    assert spec.hyperparameters["sagemaker_submit_directory"] == json.dumps(str(example.source_dir))
    assert spec.hyperparameters["epochs"] == "1"  # the request's value wins over the example's
    assert set(example.hyperparameters) <= set(spec.hyperparameters)
    assert {c.name: c.input_mode for c in spec.channels} == {"train": "Pipe", "validation": "File"}
    docker_spec, _ = training_spec(LocalTrainingJob(mode="docker"))
    assert docker_spec.hyperparameters["sagemaker_submit_directory"] == '"/opt/ml/code"'


def test_importing_smbyoc_emulator_imports_no_backend() -> None:
    probe = ("import sys, smbyoc.emulator as e\n"
             "heavy = [m for m in ('docker', 'smbyoc.emulator.training_job', 'smbyoc.emulator.local_training')"
             " if m in sys.modules]\n"
             "assert not heavy, heavy\n"
             "assert e.run_local_training.__module__ == 'smbyoc.emulator.local_training'\n"
             "assert 'docker' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
