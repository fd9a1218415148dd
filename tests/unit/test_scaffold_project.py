"""`smbyoc init`: what a new project holds, that its code really trains and predicts, and that a refused or
failed init leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.errors import ConfigError
from smbyoc.hyperparameter_schema import load_schema
from smbyoc.scaffold.project import (
    PLACEHOLDER,
    ProjectSpec,
    _publish,
    render_files,
    render_project,
    templates_dir,
)

COMMON = {
    "README.md", ".gitignore", ".dockerignore", "pyproject.toml", "requirements-ci.txt", "Dockerfile.train",
    "Dockerfile.serve", "code/train.py", "code/inference.py", "code/hyperparameters.schema.json",
    "data/train/train.csv", "data/validation/validation.csv", "tests/test_project.py", "tests/payload.csv",
    "cloudformation/endpoint.yaml",
}
CODEBUILD = {"buildspec.yml", "cloudformation/pipeline.yaml"}
GITHUB = {".github/workflows/build.yml", "cloudformation/github-role.yaml"}


def spec(name: str = "churn-model", ci: str = "codebuild,github") -> ProjectSpec:
    return ProjectSpec.create(name, region="eu-west-1", ci=ci, smbyoc_version="1.2.3")


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(("ci", "extra"), [
    ("codebuild,github", CODEBUILD | GITHUB), ("github", GITHUB), ("codebuild", CODEBUILD), ("none", set()),
    (" GitHub , codebuild ", CODEBUILD | GITHUB),
])
def test_the_project_has_the_common_files_and_those_of_the_chosen_ci(tmp_path: Path, ci: str, extra: set[str]) -> None:
    written = render_project(spec(ci=ci), tmp_path / "churn-model")
    assert listing(tmp_path / "churn-model") == COMMON | extra == {p.as_posix() for p in written}
    assert siblings(tmp_path) == ["churn-model"]  # no staging directory left


def test_every_placeholder_is_replaced_with_the_projects_values(tmp_path: Path) -> None:
    files = {path.as_posix(): text for path, text in render_files(spec()).items()}
    for path, text in files.items():
        assert "{{smbyoc:" not in text, path
    assert "ARG SMBYOC_REGISTRY=smbyoc\nARG BASE_IMAGE=${SMBYOC_REGISTRY}/train:cpu\nFROM ${BASE_IMAGE}" in \
        files["Dockerfile.train"]
    assert "ARG BASE_IMAGE=${SMBYOC_REGISTRY}/serve:cpu" in files["Dockerfile.serve"]
    assert "smbyoc[docker,s3]==1.2.3" in files["requirements-ci.txt"]
    assert "AWS_REGION: eu-west-1" in files[".github/workflows/build.yml"]
    assert 'RepositoryName: "churn-model/serve"' in files["cloudformation/pipeline.yaml"]
    assert 'logging.getLogger("churn_model.train")' in files["code/train.py"]
    # every template is used, and each placeholder names a known value
    known = set(spec().variables())
    for template in templates_dir().rglob("*.tmpl"):
        assert set(PLACEHOLDER.findall(template.read_text(encoding="utf-8"))) <= known, template


def test_an_unreleased_smbyoc_is_not_pinned() -> None:
    files = render_files(ProjectSpec.create("ab", region="us-east-1", smbyoc_version="0.0.0+unknown"))
    assert "smbyoc[docker,s3]\n" in files[Path("requirements-ci.txt")]


def test_files_get_the_umask_permissions_and_python_compiles(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        render_project(spec(), tmp_path / "p")
    finally:
        os.umask(old)
    root = tmp_path / "p"
    assert stat.S_IMODE(root.stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "code" / "train.py").stat().st_mode) == 0o640
    for path in root.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_a_non_empty_target_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "churn-model"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as info:
        render_project(spec(), target)
    assert str(info.value).startswith(f"{target}: is not empty (1 entries: notes.txt)")
    assert listing(target) == {"notes.txt"} and siblings(tmp_path) == ["churn-model"]


def test_an_empty_current_directory_is_filled_and_stays_the_same_directory(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p").mkdir()
    monkeypatch.chdir(tmp_path / "p")
    inode = os.stat(".").st_ino
    render_project(spec(), Path("."))
    assert os.stat(".").st_ino == inode and Path("Dockerfile.serve").is_file()
    assert listing(Path.cwd()) == COMMON | CODEBUILD | GITHUB and siblings(tmp_path) == ["p"]


def test_entries_are_moved_into_an_existing_directory_all_or_none(tmp_path: Path) -> None:
    staging, target = tmp_path / "staging", tmp_path / "target"
    (staging / "a").mkdir(parents=True)
    (staging / "a" / "f").write_text("1")
    (staging / "b").write_text("2")
    target.mkdir()
    (target / "b").write_text("someone else's")  # appeared after the target was checked
    with pytest.raises(FileExistsError):
        _publish(staging, target)
    assert siblings(target) == ["b"] and (target / "b").read_text() == "someone else's"
    assert listing(staging) == {"a/f", "b"}


@pytest.mark.parametrize(("make", "culprit"), [
    (lambda t: t.write_text("x"), "exists and is not a directory"),
    (lambda t: t.symlink_to(t.parent), "is a symbolic link"),
    (lambda t: None, "does not exist"),
])
def test_other_unusable_targets_are_refused(tmp_path: Path, make, culprit: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "p" if culprit != "does not exist" else tmp_path / "missing" / "p"
    make(target)
    before = siblings(tmp_path)
    with pytest.raises(ConfigError, match=culprit):
        render_project(spec(), target)
    assert siblings(tmp_path) == before


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = Path.write_text
    calls = []

    def failing_write(self: Path, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        calls.append(self)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'p'}: cannot write the project: No space left on device$"):
        render_project(spec(), tmp_path / "p")
    assert siblings(tmp_path) == []
    (tmp_path / "empty").mkdir()
    calls.clear()
    with pytest.raises(ConfigError, match="No space"):
        render_project(spec(), tmp_path / "empty")
    assert siblings(tmp_path) == ["empty"] and siblings(tmp_path / "empty") == []


def test_the_generated_code_trains_and_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """code/train.py on the sample data (as `train` runs it: arguments from the schema's names, SM_* variables),
    then code/inference.py's handler chain on tests/payload.csv, in this Python (numpy)."""
    pytest.importorskip("numpy")
    root = tmp_path / "p"
    render_project(spec(), root)
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(root / "data/train"),
           "SM_CHANNEL_VALIDATION": str(root / "data/validation"),
           "SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "output")}
    run = subprocess.run([sys.executable, "train.py", "--epochs", "150", "--learning-rate", "0.5"], cwd=root / "code",
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "epoch=150 train_loss=" in run.stderr
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert metrics["validation_accuracy"] >= 0.85, metrics

    module_spec = importlib.util.spec_from_file_location("scaffold_inference", root / "code" / "inference.py")
    assert module_spec is not None and module_spec.loader is not None
    inference = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, "scaffold_inference", inference)  # dataclasses look their module up
    module_spec.loader.exec_module(inference)
    model = inference.model_fn(str(tmp_path / "model"))
    body = (root / "tests" / "payload.csv").read_bytes()
    answer, content_type = inference.output_fn(inference.predict_fn(inference.input_fn(body, "text/csv"), model),
                                               "application/json")
    assert content_type == "application/json"
    assert [p["label"] for p in json.loads(answer)["predictions"]] == ["small", "medium", "large"]
    with pytest.raises(inference.RequestError) as info:
        inference.predict_fn(inference.input_fn(b"1,2", "text/csv"), model)
    assert info.value.status_code == 400
    with pytest.raises(inference.RequestError) as info:
        inference.input_fn(b"1,2,3,4", "text/plain")
    assert info.value.status_code == 415


def test_a_bad_row_fails_training_with_one_line(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    root = tmp_path / "p"
    render_project(spec(), root)
    (root / "data/train/bad.csv").write_text("length_cm,width_cm,height_cm,weight_kg,label\n1,2,x,4,small\n")
    run = subprocess.run([sys.executable, "train.py", "--train", str(root / "data/train"), "--model-dir",
                          str(tmp_path / "model")], cwd=root / "code", capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {root / 'data/train/bad.csv'}:2: a feature is not")
    assert not (tmp_path / "model").exists()


def test_the_hyperparameter_schema_is_one_smbyoc_train_accepts(tmp_path: Path) -> None:
    render_project(spec(), tmp_path / "p")
    schema = load_schema(tmp_path / "p" / "code" / "hyperparameters.schema.json")
    assert schema is not None


def test_cli_creates_the_project_and_says_what_next(tmp_path: Path) -> None:
    _register()
    result = CliRunner().invoke(cli, ["init", "churn-model", "--directory", str(tmp_path / "c"), "--ci", "github"])
    assert result.exit_code == 0, result.output
    assert f"created churn-model in {tmp_path / 'c'} (17 files)" in result.output
    assert "docker build -f Dockerfile.serve -t churn-model-serve ." in result.output
    assert (tmp_path / "c" / ".github" / "workflows" / "build.yml").is_file()


def test_cli_defaults_to_a_directory_named_after_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", "ab"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ab" / "buildspec.yml").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["Bad_Name"], "Error: NAME: 'Bad_Name' must be lowercase"),
    (["ok-name", "--ci", "gitlab"], "Error: --ci: 'gitlab': expected a comma-separated list"),
    (["ok-name", "--region", "mars"], "Error: --region: 'mars' is not an AWS region name"),
    (["Bad_Name", "--region", "mars", "--ci", "x"], "Error: NAME: 'Bad_Name' must be lowercase"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                           message: str) -> None:
    _register()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", *args])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    _register()
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["init", "ab", "-d", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path}: is not empty (1 entries: keep.txt); smbyoc init writes a new "
                             "project only into a new or empty directory\n")
    assert siblings(tmp_path) == ["keep.txt"]
