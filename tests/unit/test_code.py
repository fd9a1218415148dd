"""Program resolution, code preparation, entry point types and install commands."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from smbyoc import exit_codes
from smbyoc.archives import create_tar_gz
from smbyoc.errors import ArchiveError, UserCodeError
from smbyoc.training.code import (
    EntryPointType,
    UserProgram,
    entry_point_type,
    install_commands,
    prepare_code,
    program_environment,
)
from smbyoc.training.main import describe_failure, last_exception
from smbyoc.training.process import ProcessResult


def _src(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    return src


@pytest.mark.parametrize(("files", "program", "kind"), [
    ({}, "run.sh", EntryPointType.COMMAND),
    ({"setup.py": ""}, "run.sh", EntryPointType.COMMAND),
    ({"setup.py": ""}, "train.py", EntryPointType.PYTHON_PACKAGE),
    ({"pyproject.toml": ""}, "train", EntryPointType.PYTHON_PACKAGE),
    ({}, "train.py", EntryPointType.PYTHON_PROGRAM),
    ({}, "train", EntryPointType.COMMAND),
])
def test_entry_point_type_like_the_toolkit(tmp_path, files, program, kind):
    assert entry_point_type(_src(tmp_path, files), program) is kind


def test_prepare_code_copies_a_directory_into_an_empty_code_dir(tmp_path):
    src = _src(tmp_path, {"train.py": "x"})
    code = tmp_path / "code"
    assert prepare_code(str(src), code) == code
    assert (code / "train.py").read_text() == "x"
    # not empty any more: left as it is
    (src / "train.py").write_text("changed")
    prepare_code(f"file://{src}", code)
    assert (code / "train.py").read_text() == "x"


def test_prepare_code_in_place_and_from_tarball(tmp_path):
    src = _src(tmp_path, {"train.py": "y"})
    assert prepare_code(str(src), src) == src
    archive = create_tar_gz(src, tmp_path / "sourcedir.tar.gz")
    code = tmp_path / "code"
    code.mkdir()
    prepare_code(f"file://{archive}", code)
    assert (code / "train.py").read_text() == "y"


def test_prepare_code_errors(tmp_path):
    with pytest.raises(UserCodeError, match="does not exist") as info:
        prepare_code(str(tmp_path / "missing"), tmp_path / "code")
    assert info.value.exit_code == exit_codes.NOT_FOUND
    (tmp_path / "notatar.txt").write_text("hello")
    with pytest.raises(UserCodeError, match="neither a directory nor a tar"):
        prepare_code(str(tmp_path / "notatar.txt"), tmp_path / "code")
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises((UserCodeError, ArchiveError)):
        prepare_code(str(tmp_path / "bad.tar.gz"), tmp_path / "code2")


def test_s3_without_boto3_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(UserCodeError, match="boto3 is not installed"):
        prepare_code("s3://bucket/job/source/sourcedir.tar.gz", tmp_path / "code")


def test_resolve_missing_and_unset_program(tmp_path):
    with pytest.raises(UserCodeError, match="SAGEMAKER_PROGRAM") as info:
        UserProgram.resolve(None, tmp_path)
    assert info.value.exit_code == exit_codes.NOT_FOUND
    (tmp_path / "other.py").write_text("")
    with pytest.raises(UserCodeError, match=r"'train.py' not found.*other.py") as info:
        UserProgram.resolve("train.py", tmp_path)
    assert info.value.exit_code == exit_codes.NOT_FOUND


def test_commands_are_made_executable_and_directories_refused(tmp_path):
    script = tmp_path / "run"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    program = UserProgram.resolve("run", tmp_path)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert program.command(["--a", "1"]) == [str(script), "--a", "1"]
    (tmp_path / "adir").mkdir()
    with pytest.raises(UserCodeError, match="not a file") as info:
        UserProgram.resolve("adir", tmp_path)
    assert info.value.exit_code == exit_codes.NOT_EXECUTABLE


def test_chmod_failure_is_not_executable(tmp_path, monkeypatch):
    script = tmp_path / "run"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Read-only file system")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(UserCodeError, match="cannot be made executable") as info:
        UserProgram.resolve("run", tmp_path)
    assert info.value.exit_code == exit_codes.NOT_EXECUTABLE


def test_commands(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "plain").write_text("echo no shebang\n")
    assert UserProgram.resolve("train.py", tmp_path).command(["-x", "1"], python="py") == ["py", "train.py", "-x", "1"]
    assert UserProgram.resolve("plain", tmp_path).command([]) == ["/bin/sh", str(tmp_path / "plain")]
    (tmp_path / "setup.py").write_text("")
    package = UserProgram.resolve("train.py", tmp_path)
    assert package.kind is EntryPointType.PYTHON_PACKAGE
    assert package.command(["a"], python="py") == ["py", "-m", "train", "a"]


def test_install_commands(tmp_path):
    (tmp_path / "train.py").write_text("")
    program = UserProgram.resolve("train.py", tmp_path)
    assert install_commands(program, allow=True) == []
    (tmp_path / "requirements.txt").write_text("numpy\n")
    assert install_commands(program, allow=True, python="py") == [
        ["py", "-m", "pip", "install", "--disable-pip-version-check", "-r", "requirements.txt"]]
    with pytest.raises(UserCodeError, match=r"forbidden.*SMBYOC_ALLOW_REQUIREMENTS_INSTALL=false.*Dockerfile"):
        install_commands(program, allow=False)
    (tmp_path / "setup.py").write_text("")
    package = UserProgram.resolve("train.py", tmp_path)
    assert install_commands(package, allow=True, python="py") == [
        ["py", "-m", "pip", "install", "--disable-pip-version-check", ".", "-r", "requirements.txt"]]
    (tmp_path / "requirements.txt").unlink()
    assert install_commands(package, allow=False) == []  # runs from the code dir, not installed


def test_program_environment_puts_code_dir_first(tmp_path):
    env = program_environment({"PYTHONPATH": f"/a{os.pathsep}{tmp_path}", "X": "1"}, {"SM_HPS": "{}"}, tmp_path)
    assert env["PYTHONPATH"] == f"{tmp_path}{os.pathsep}/a"
    assert env["X"] == "1" and env["SM_HPS"] == "{}"


def test_last_exception_and_failure_description():
    stderr = ("noise\nTraceback (most recent call last):\n  File \"t.py\", line 1, in <module>\n"
              "    raise mod.Custom('a')\nmod.Custom: a: b\nmore line\n")
    assert last_exception(stderr) == ("Custom", "a: b")
    assert last_exception("plain error output\n") is None
    result = ProcessResult(("python", "t.py"), 1, stderr, None, ())
    assert describe_failure("t.py", result)[0] == "Custom"
    killed = ProcessResult(("./run",), 137, "", 9, ())
    kind, message = describe_failure("run", killed)
    assert kind == "ExecuteUserScriptError" and "SIGKILL" in message and "out of memory" in message
