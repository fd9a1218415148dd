"""`smbyoc build --emit-context DIR`: the emitted files, and every refusal (one line, non-zero exit, nothing
half-created). The Python package resolution is replaced by a recorder here (argument shapes and error
paths only); tests/docker/test_emit_context_docker.py resolves for real and builds the context with the
docker CLI itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.cli.build_cmd import build
from smbyoc.errors import BuildError, ConfigError
from smbyoc.images import builder, context, wheelhouse
from smbyoc.images.variants import load_variant

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent.sock"}


@pytest.fixture()
def fake_resolution(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for the slow parts of :func:`context.assemble` (pip download, the smbyoc wheel): they write
    one placeholder wheel each; the list records the variants resolved."""
    calls: list[str] = []

    def fake_resolve(variant: Any, files: Any, reqs: Any, dest: Path, **kw: Any) -> list[Path]:
        calls.append(variant.name)
        dest.mkdir(parents=True)
        (dest / "dep-1.0-py3-none-any.whl").write_bytes(b"dep")
        return [dest / "dep-1.0-py3-none-any.whl"]

    def fake_wheel(dest: Path, **kw: Any) -> Path:
        dest.mkdir(parents=True)
        (dest / "smbyoc-0-py3-none-any.whl").write_bytes(b"smbyoc")
        return dest / "smbyoc-0-py3-none-any.whl"

    monkeypatch.setattr(wheelhouse, "resolve_wheelhouse", fake_resolve)
    monkeypatch.setattr(wheelhouse, "build_smbyoc_wheel", fake_wheel)
    for name, value in NO_ENGINE.items():
        monkeypatch.setenv(name, value)
    return calls


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --- the Dockerfile: build args as ARG defaults, labels as a LABEL instruction --------------------------------

def test_build_args_become_the_arg_defaults() -> None:
    text = "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}\nARG KIND\nARG KIND_OTHER=x\n"
    baked = context.bake_build_args(text, {"BASE_IMAGE": "smbyoc/base:bookworm", "KIND": "train"})
    assert baked == "ARG BASE_IMAGE=smbyoc/base:bookworm\nFROM ${BASE_IMAGE}\nARG KIND=train\nARG KIND_OTHER=x\n"


def test_neuron_gets_its_kind_baked_in_like_the_build_arg() -> None:
    neuron = load_variant("neuron")
    args = builder.build_args(neuron, "train", "ubuntu:22.04")
    assert args == {"BASE_IMAGE": "ubuntu:22.04", "KIND": "train"}
    text = context.emitted_dockerfile(context.ContextSpec(neuron, "train"), args, {}, "t:1")
    assert "\nARG KIND=train\n" in text and "ARG KIND=serve" not in text
    assert builder.build_args(load_variant("cpu"), "serve", "b:1") == {"BASE_IMAGE": "b:1"}


@pytest.mark.parametrize(("args", "message"), [
    ({"NOPE": "x"}, "the Dockerfile declares no ARG NOPE"),
    ({"BASE_IMAGE": "bad image"}, "BASE_IMAGE='bad image' cannot be written as an ARG default"),
    ({"BASE_IMAGE": "x\nRUN rm -rf /"}, "cannot be written as an ARG default"),
    ({"BAD NAME": "x"}, "is not a Dockerfile ARG name"),
])
def test_unbakeable_build_args_are_one_line(args: dict[str, str], message: str) -> None:
    with pytest.raises(BuildError, match=message):
        context.bake_build_args("ARG BASE_IMAGE=a\n", args)


def test_labels_are_quoted_against_expansion_and_sorted() -> None:
    text = context.label_instruction({"b": 'say "$HOME" \\ ok', "a.x": "true"})
    assert text == ('LABEL "a.x"="true" \\\n'
                    '      "b"="say \\"\\$HOME\\" \\\\ ok"\n')
    assert context.label_instruction({}) == ""
    with pytest.raises(BuildError, match=r"image label b 'x\\ny' has a control character"):
        context.label_instruction({"b": "x\ny"})


def test_emitted_dockerfile_is_the_variants_with_base_and_labels(tmp_path: Path) -> None:
    cpu = load_variant("cpu")
    spec = context.ContextSpec(cpu, "serve", code_dir=tmp_path)
    labels = builder.image_labels(cpu, "serve", "smbyoc/base:bookworm", {builder.MULTI_MODELS_LABEL: "true"})
    text = context.emitted_dockerfile(spec, {"BASE_IMAGE": "smbyoc/base:bookworm"}, labels, "me/serve:1")
    plain = context.dockerfile_text(spec)
    assert text.splitlines()[1] == "# Build this directory as it is: docker build -t me/serve:1 DIR"
    assert "ARG BASE_IMAGE=smbyoc/base:bookworm" in text and "ARG BASE_IMAGE=python" not in text
    assert text.count("\nFROM ") == plain.count("\nFROM ")
    assert "COPY code/ /opt/ml/code/" in text
    tail = text[text.rindex("\nLABEL "):]
    assert '"com.amazonaws.sagemaker.capabilities.multi-models"="true"' in tail
    assert f'"{builder.SOURCE_LABEL}"="{labels[builder.SOURCE_LABEL]}"' in tail
    assert text.index('CMD ["serve"]') < text.rindex("\nLABEL ")  # last, where the API puts its labels
    arm = context.emitted_dockerfile(context.ContextSpec(load_variant("arm64"), "train"), {"BASE_IMAGE": "b"}, {},
                                     "t")
    assert "docker build --platform linux/arm64 -t t DIR" in arm


# --- emit: the files, atomically ---------------------------------------------------------------------------

def test_emit_writes_a_self_contained_context(tmp_path: Path, fake_resolution: list[str]) -> None:
    code = tmp_path / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (code / "inference.py").write_text("def model_fn(d):\n    return d\n")
    dest = tmp_path / "ctx"
    result = builder.emit_context("serve", dest, "cpu", "me/serve:1", code_dir=code, base_image="my/base:2",
                                  labels={builder.MULTI_MODELS_LABEL: "true"})
    assert result.path == dest and result.base_image == "my/base:2" and result.tag == "me/serve:1"
    assert result.build_command() == f"docker build -t me/serve:1 {dest}"
    assert tree(dest) == [".dockerignore", "Dockerfile", "README.md", "code", "code/inference.py", "debs",
                          "entrypoint", "requirements.txt", "wheelhouse", "wheelhouse/deps",
                          "wheelhouse/deps/dep-1.0-py3-none-any.whl", "wheelhouse/smbyoc",
                          "wheelhouse/smbyoc/smbyoc-0-py3-none-any.whl"]
    assert siblings(dest) == ["code", "ctx"]  # no temporary sibling left
    dockerfile = (dest / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=my/base:2" in dockerfile and '"org.smbyoc.base-image"="my/base:2"' in dockerfile
    readme = (dest / "README.md").read_text()
    assert "    docker build -t me/serve:1 .\n" in readme
    assert "    docker buildx build --provenance=false --output type=docker -t me/serve:1 .\n" in readme
    assert "--platform linux/amd64" in readme and "OCI image index" in readme
    ignore = (dest / ".dockerignore").read_text().splitlines()
    assert {"README.md", "**/__pycache__", "**/*.pyc", "**/.git"} <= set(ignore)
    assert (dest / "entrypoint").stat().st_mode & 0o111
    assert fake_resolution == ["cpu"]


def test_without_an_engine_the_base_is_the_public_default(tmp_path: Path, fake_resolution: list[str]) -> None:
    lines: list[str] = []
    result = builder.emit_context("train", tmp_path / "ctx", "arm64", progress=lines.append)
    assert result.base_image == "arm64v8/python:3.11-slim-bookworm" and result.tag == "smbyoc/train:arm64"
    assert "ARG BASE_IMAGE=arm64v8/python:3.11-slim-bookworm" in (tmp_path / "ctx" / "Dockerfile").read_text()
    assert any(line.startswith("base image: arm64v8/python:3.11-slim-bookworm (not checked: no Docker Engine")
               for line in lines)
    assert result.build_command().startswith("docker build --platform linux/arm64 ")


def test_empty_directory_is_filled_and_force_replaces_a_full_one(tmp_path: Path,
                                                                 fake_resolution: list[str]) -> None:
    dest = tmp_path / "ctx"
    dest.mkdir()
    builder.emit_context("serve", dest, base_image="b:1")
    (dest / "stale.txt").write_text("from before\n")
    with pytest.raises(ConfigError, match=r"^--emit-context .*ctx: exists and is not empty; pass --force"):
        builder.emit_context("serve", dest, base_image="b:2")
    assert "ARG BASE_IMAGE=b:1" in (dest / "Dockerfile").read_text()
    builder.emit_context("serve", dest, base_image="b:2", force=True)
    assert not (dest / "stale.txt").exists() and "ARG BASE_IMAGE=b:2" in (dest / "Dockerfile").read_text()
    assert siblings(dest) == ["ctx"]


def test_a_failure_midway_leaves_nothing_and_keeps_the_old_directory(tmp_path: Path, fake_resolution: list[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "ctx"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine\n")

    def broken(*a: Any, **kw: Any) -> Path:
        raise BuildError("building the smbyoc wheel failed: boom")

    monkeypatch.setattr(wheelhouse, "build_smbyoc_wheel", broken)
    with pytest.raises(BuildError, match="boom"):
        builder.emit_context("serve", dest, base_image="b:1", force=True)
    assert tree(dest) == ["keep.txt"] and siblings(dest) == ["ctx"]
    with pytest.raises(BuildError, match="boom"):
        builder.emit_context("serve", tmp_path / "new", base_image="b:1")
    assert siblings(dest) == ["ctx"]


def test_bad_values_fail_before_anything_is_written(tmp_path: Path, fake_resolution: list[str]) -> None:
    with pytest.raises(BuildError, match="cannot be written as an ARG default"):
        builder.emit_context("serve", tmp_path / "ctx", base_image="has space")
    with pytest.raises(ConfigError, match=r"^--tag: 'me:1\\nRUN x' is not an image reference"):
        builder.emit_context("serve", tmp_path / "ctx", tag="me:1\nRUN x", base_image="b:1")
    assert list(tmp_path.iterdir()) == [] and fake_resolution == []


# --- refusals: one line naming the culprit, before anything slow -------------------------------------------

@pytest.fixture()
def runner(fake_resolution: list[str]) -> CliRunner:
    return CliRunner()


def emit_cli(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(build, ["--kind", "serve", "--base-image", "b:1", "-q", *args])


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return str(lines[0].removeprefix("Error: "))


def test_cli_emits_and_prints_the_directory(runner: CliRunner, tmp_path: Path) -> None:
    result = emit_cli(runner, "--emit-context", str(tmp_path / "ctx"), "--multi-model")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "ctx")
    assert '"com.amazonaws.sagemaker.capabilities.multi-models"="true"' in (tmp_path / "ctx" / "Dockerfile").read_text()


def test_cli_refuses_a_non_empty_directory_and_leaves_it_alone(runner: CliRunner, tmp_path: Path,
                                                               fake_resolution: list[str]) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "notes.txt").write_text("mine\n")
    line = one_line_error(emit_cli(runner, "--emit-context", str(tmp_path / "ctx")))
    assert line == f"--emit-context {tmp_path / 'ctx'}: exists and is not empty; pass --force to replace it"
    assert tree(tmp_path) == ["ctx", "ctx/notes.txt"] and fake_resolution == []


def test_cli_refusals(runner: CliRunner, tmp_path: Path, fake_resolution: list[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "link").symlink_to(code)
    cases = {
        ("--emit-context", str(tmp_path / "file")): "file: exists and is not a directory",
        ("--emit-context", str(tmp_path / "no" / "ctx")): f"its parent directory {tmp_path / 'no'} does not exist",
        ("--emit-context", str(tmp_path / "link")): "link: is a symbolic link; name the directory itself",
        ("--emit-context", str(code / "ctx"), "--context", str(code)): "lies inside --context",
        ("--emit-context", str(tmp_path), "--force", "--context", str(code)): f"holds --context {code}",
        ("--emit-context", str(tmp_path / "ctx"), "--no-cache"): "--no-cache: builds nothing with --emit-context",
        ("--force",): "--force: only with --emit-context DIR",
        ("--emit-context", str(tmp_path / "ctx"), "--kind", "train", "--multi-model"): "--multi-model: only for",
    }
    for args, expected in cases.items():
        assert expected in one_line_error(emit_cli(runner, *args)), args
    monkeypatch.chdir(code)
    assert one_line_error(emit_cli(runner, "--emit-context", ".", "--force")).endswith(
        ": is or holds the current directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code", "file", "link"] and fake_resolution == []
    assert list(code.iterdir()) == []


def test_ei_has_no_train_context(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(build, ["--kind", "train", "--variant", "ei", "--emit-context", str(tmp_path / "ctx")])
    assert "variant ei has no train image" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []
