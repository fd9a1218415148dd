"""Variant table, wheelhouse command construction, context assembly and Docker error translation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smbyoc.docker.client import get_client, translate
from smbyoc.errors import BuildError, ConfigError, DockerError
from smbyoc.images import context, wheelhouse
from smbyoc.images.repositories import newest, parse_packages_index
from smbyoc.images.variants import VARIANT_NAMES, all_variants, data_dir, load_variant

REPO = Path(__file__).resolve().parents[2]


def test_every_variant_loads_and_ships_in_the_package() -> None:
    variants = {v.name: v for v in all_variants()}
    assert set(variants) == set(VARIANT_NAMES)
    assert variants["ei"].kinds == ("serve",) and variants["ei"].discontinued
    assert variants["arm64"].arch == "aarch64"
    for v in variants.values():
        for kind in v.kinds:
            assert v.dockerfile(kind).is_file() and v.requirements_file(kind).is_file()
            assert v.base_image(kind)
    # the packaged copies are the repository's files (one source of truth)
    assert (data_dir() / "Dockerfile.serve").read_bytes() == (REPO / "Dockerfile.serve").read_bytes()


def test_cpu_serve_has_onnxruntime_and_not_torch() -> None:
    lines = load_variant("cpu").requirements_file("serve").read_text().splitlines()
    names = [ln.split(">")[0].split("=")[0] for ln in lines if ln and not ln.startswith("#")]
    assert "onnxruntime" in names and not any(n.startswith("torch") for n in names)


def test_unknown_variant_and_missing_kind_are_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown variant 'gpu'"):
        load_variant("gpu")
    with pytest.raises(BuildError, match="variant ei has no train image"):
        load_variant("ei").check_kind("train")


def test_broken_variant_json_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "images" / "cpu").mkdir(parents=True)
    (tmp_path / "images" / "cpu" / "variant.json").write_text(json.dumps({"summary": "x"}))
    with pytest.raises(ConfigError, match=r"variant.json: platform"):
        load_variant("cpu", root=tmp_path)


def test_pip_download_command_targets_the_image_not_the_host(tmp_path: Path) -> None:
    v = load_variant("arm64")
    cmd = wheelhouse.pip_download_command(v, [Path("r.txt")], ["click>=8.1"], tmp_path, python="py", host="aarch64")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert platforms[0] == "manylinux_2_36_aarch64" and "manylinux2014_aarch64" in platforms
    assert all(p.endswith("aarch64") for p in platforms)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--abi"] == ["cp311", "abi3", "none"]
    assert cmd[-3:] == ["-r", "r.txt", "click>=8.1"]
    neuron = wheelhouse.pip_download_command(load_variant("neuron"), [], [], tmp_path)
    assert "https://pip.repos.neuron.amazonaws.com" in neuron


def test_wheelhouse_key_changes_with_requirements(tmp_path: Path) -> None:
    r = tmp_path / "r.txt"
    r.write_text("flask\n")
    v = load_variant("cpu")
    key = wheelhouse.wheelhouse_key(v, [r], [])
    assert key == wheelhouse.wheelhouse_key(v, [r], [])
    assert key != wheelhouse.wheelhouse_key(load_variant("arm64"), [r], [])
    r.write_text("flask==3.0\n")
    assert key != wheelhouse.wheelhouse_key(v, [r], [])


def test_dockerfile_gets_user_code_only_when_given(tmp_path: Path) -> None:
    v = load_variant("cpu")
    plain = context.dockerfile_text(context.ContextSpec(v, "serve"))
    assert "/opt/ml" not in "\n".join(ln for ln in plain.splitlines() if not ln.startswith("#"))
    assert 'ENTRYPOINT ["/opt/smbyoc/bin/entrypoint"]' in plain and "tini" not in plain
    with_code = context.dockerfile_text(context.ContextSpec(v, "serve", code_dir=tmp_path))
    assert with_code.rstrip().endswith("COPY code/ /opt/ml/code/")


def test_context_spec_finds_requirements_and_rejects_bad_paths(tmp_path: Path) -> None:
    v = load_variant("cpu")
    (tmp_path / "requirements.txt").write_text("requests\n")
    assert context.ContextSpec(v, "train", code_dir=tmp_path).user_requirements() == tmp_path / "requirements.txt"
    with pytest.raises(BuildError, match="not a directory"):
        context.ContextSpec(v, "train", code_dir=tmp_path / "nope").validate()
    with pytest.raises(BuildError, match="no such file"):
        context.ContextSpec(v, "train", requirements=tmp_path / "nope.txt").validate()


def test_assemble_writes_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Context layout with the resolution replaced by a recorder (the docker tests resolve for real)."""
    calls: list[tuple] = []

    def fake_resolve(variant, files, reqs, dest, **kw):  # type: ignore[no-untyped-def]
        calls.append((variant.name, files, reqs))
        dest.mkdir(parents=True)
        return []

    def fake_wheel(dest, **kw):  # type: ignore[no-untyped-def]
        dest.mkdir(parents=True)
        (dest / "smbyoc-0-py3-none-any.whl").write_bytes(b"")
        return dest / "smbyoc-0-py3-none-any.whl"

    monkeypatch.setattr(wheelhouse, "resolve_wheelhouse", fake_resolve)
    monkeypatch.setattr(wheelhouse, "build_smbyoc_wheel", fake_wheel)
    code = tmp_path / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / "train.py").write_text("print(1)\n")
    (code / "requirements.txt").write_text("requests\n")
    ctx = context.assemble(context.ContextSpec(load_variant("cpu"), "train", code_dir=code), tmp_path / "ctx")
    names = sorted(str(p.relative_to(ctx.path)) for p in ctx.path.rglob("*"))
    assert names == ["Dockerfile", "code", "code/requirements.txt", "code/train.py", "debs", "entrypoint",
                     "requirements.txt", "wheelhouse", "wheelhouse/deps", "wheelhouse/smbyoc",
                     "wheelhouse/smbyoc/smbyoc-0-py3-none-any.whl"]
    assert (ctx.path / "entrypoint").stat().st_mode & 0o111
    assert calls[0][1][-1] == (code / "requirements.txt").resolve()
    assert any(r.startswith("click") for r in calls[0][2])


def test_packages_index_parsing_picks_the_newest() -> None:
    index = parse_packages_index("Package: a\nVersion: 2.9.1\nFilename: p/a_2.9.1.deb\n\n"
                                 "Package: a\nVersion: 2.10.0\nFilename: p/a_2.10.0.deb\n")
    assert newest(index["a"])["Filename"] == "p/a_2.10.0.deb"


def test_no_engine_is_one_line() -> None:
    with pytest.raises(DockerError, match=r"^no Docker Engine answers at unix:///nonexistent.sock; run "
                                          r"scripts/setup-docker-engine$"):
        get_client({"DOCKER_HOST": "unix:///nonexistent.sock"})


def test_docker_errors_translate_to_smbyoc_errors() -> None:
    import docker.errors
    import requests

    assert isinstance(translate(docker.errors.BuildError("boom", []), "building x"), BuildError)
    err = translate(docker.errors.ImageNotFound("no such image: y"), "running y")
    assert isinstance(err, DockerError) and str(err).startswith("running y: image not found")
    assert "no Docker Engine answers" in str(translate(requests.exceptions.ConnectionError(), "x"))


def test_ensure_image_rebuilds_images_built_from_another_smbyoc(monkeypatch):
    from types import SimpleNamespace

    from smbyoc.images import builder

    built: list[str] = []
    current = builder.source_fingerprint()

    class Images:
        labels: dict[str, str] = {}

        def get(self, tag):
            return SimpleNamespace(labels=dict(self.labels))

    client = SimpleNamespace(images=Images())
    monkeypatch.setattr(builder, "build_image", lambda kind, variant, tag, **kw: built.append(tag))
    Images.labels = {builder.SOURCE_LABEL: current}
    assert builder.ensure_image("serve", client=client) == "smbyoc/serve:cpu"
    assert built == []
    Images.labels = {builder.SOURCE_LABEL: "something-else"}
    assert builder.ensure_image("serve", client=client) == "smbyoc/serve:cpu"
    assert built == ["smbyoc/serve:cpu"]


def test_foreign_image_markers_are_evaluated_for_the_image_machine(tmp_path: Path) -> None:
    """On x86_64, torch's ``platform_machine == "x86_64"`` nvidia requirements must not be followed for aarch64."""
    import subprocess
    import sys

    cmd = wheelhouse.pip_download_command(load_variant("arm64"), [], [], tmp_path, host="x86_64")
    assert cmd[1] == "-c" and cmd[3:5] == ["aarch64", "download"]
    # The launcher really makes pip see aarch64: run it with `pip --version`'s sibling, a marker evaluation.
    probe = cmd[2].replace("runpy.run_module('pip', run_name='__main__', alter_sys=True)",
                           "from pip._vendor.packaging.markers import Marker; "
                           "print(Marker('platform_machine == \"aarch64\"').evaluate(), sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", probe, "aarch64", "download", "x"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True ['download', 'x']"
    native = wheelhouse.pip_download_command(load_variant("cpu"), [], [], tmp_path, python="py", host="x86_64")
    assert native[:4] == ["py", "-m", "pip", "download"]
