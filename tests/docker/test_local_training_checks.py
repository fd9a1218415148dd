"""Docker mode of `local-train` looks the image up once (its backend's preflight), validates once, and the
library call runs a Docker job from Python as the CLI does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.docker


def counting(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], owner: Any, name: str, label: str) -> None:
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[label] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_local_train_checks_the_image_once(foreign_image: str, docker_client: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.cli import _register, cli
    from smbyoc.emulator import containers
    from smbyoc.emulator.docker_training import DockerTrainingBackend
    from smbyoc.emulator.job_spec import TrainingJobSpec

    _register()
    calls: Counter[str] = Counter()
    counting(monkeypatch, calls, TrainingJobSpec, "validate", "validate")
    counting(monkeypatch, calls, DockerTrainingBackend, "preflight", "preflight")
    counting(monkeypatch, calls, containers, "require_image", "image check")
    outcome = CliRunner().invoke(cli, ["local-train", "--image", foreign_image, "--job-name", "dk-once",
                                       "-o", str(tmp_path / "out")])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "out" / "dk-once" / "output" / "model.tar.gz").is_file()
    assert calls == {"validate": 1, "preflight": 1, "image check": 1}


def test_a_docker_job_runs_from_python(foreign_image: str, tmp_path: Path) -> None:
    from smbyoc.emulator import LocalTrainingJob, run_local_training

    lines: list[tuple[str, str]] = []
    result = run_local_training(
        LocalTrainingJob(image=foreign_image, job_name="dk-lib", output_dir=tmp_path / "out",
                         hyperparameters={"fail": "from python", "exit_code": 3}),
        sink=lambda host, line: lines.append((host, line)))
    described = result.describe()
    assert described["TrainingJobStatus"] == "Failed" and described["ExitCode"] == 3
    assert described["FailureReason"] == "AlgorithmError: ForeignError: asked to fail: from python"
    assert lines and {host for host, _ in lines} == {"algo-1"}
