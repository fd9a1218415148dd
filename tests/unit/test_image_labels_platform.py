"""Issue 13, the parts that need no engine: image labels, the ei migration path, ``build --list`` rows and
arguments, the one-line preflight for variants that cannot be built here, damaged cached wheels, and the
platform check between an image and an instance type (the Docker tests run it against real images)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.emulator import containers, image_platform
from smbyoc.errors import BuildError, ConfigError
from smbyoc.images import builder, inventory, wheelhouse
from smbyoc.images.defaults import default_variant
from smbyoc.images.variants import load_variant

# ---------------------------------------------------------------------------------------------- labels


def test_labels_name_variant_kind_platform_version_and_source() -> None:
    labels = builder.image_labels(load_variant("cpu"), "serve", "smbyoc/base:bookworm",
                                  {builder.MULTI_MODELS_LABEL: "true"})
    assert labels[builder.VARIANT_LABEL] == "cpu" and labels[builder.KIND_LABEL] == "serve"
    assert labels[builder.PLATFORM_LABEL] == "linux/amd64"
    assert labels[builder.VERSION_LABEL] and labels[builder.SOURCE_LABEL] == builder.source_fingerprint()
    assert labels[builder.MULTI_MODELS_LABEL] == "true"
    assert builder.REQUESTED_VARIANT_LABEL not in labels and builder.MIGRATION_LABEL not in labels
    assert builder.image_labels(load_variant("arm64"), "train", "b")[builder.PLATFORM_LABEL] == "linux/arm64"


def test_ei_builds_the_cpu_serving_image_labelled_as_such() -> None:
    ei = load_variant("ei")
    assert ei.builds_as == "cpu" and ei.image_variant == "cpu" and ei.discontinued
    labels = builder.image_labels(ei, "serve", "smbyoc/base:bookworm")
    assert labels[builder.VARIANT_LABEL] == "cpu" and labels[builder.REQUESTED_VARIANT_LABEL] == "ei"
    line = builder.migration_line(ei)
    assert labels[builder.MIGRATION_LABEL] == line and "\n" not in line
    assert line.startswith("ei -> cpu: building the cpu serving image instead") and "AcceleratorType" in line
    # the same requirements as the cpu serve image: the same packages, the same layers
    assert ei.requirements_file("serve") == load_variant("cpu").requirements_file("serve")


def test_announce_warns_then_says_why_in_one_line() -> None:
    lines: list[str] = []
    builder.announce(load_variant("ei"), lines.append)
    assert lines[0].startswith("WARNING: Amazon Elastic Inference is no longer available")
    assert lines[1] == builder.migration_line(load_variant("ei"))
    lines.clear()
    builder.announce(load_variant("cpu"), lines.append)
    assert lines == []


def test_builds_as_must_name_another_variant_and_give_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "images" / "ei"
    root.mkdir(parents=True)
    (root / "r.txt").write_text("")
    data = {"summary": "s", "platform": "linux/amd64", "python_version": "3.11", "glibc": "2.36",
            "dockerfile": {"serve": "Dockerfile.serve"}, "base_image": {"serve": "b"},
            "requirements": {"serve": "r.txt"}, "builds_as": "ei"}
    (root / "variant.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"variant.json: builds_as: 'ei' is not another variant"):
        load_variant("ei", tmp_path)
    (root / "variant.json").write_text(json.dumps({**data, "builds_as": "cpu"}))
    with pytest.raises(ConfigError, match=r"migration: a variant with builds_as needs the reason"):
        load_variant("ei", tmp_path)


# ---------------------------------------------------------------------------------------------- build --list


def attrs(tags: list[str], labels: dict[str, str] | None, arch: str = "amd64",
          size: int = 316_000_000) -> dict[str, Any]:
    return {"Id": "sha256:" + "ab" * 32, "RepoTags": tags, "Os": "linux", "Architecture": arch, "Size": size,
            "Created": "2026-12-01T10:00:00.123456789Z", "Config": {"Labels": labels}}


SERVE_LABELS = {"org.smbyoc.kind": "serve", "org.smbyoc.variant": "cpu", "org.smbyoc.source": "current",
                "org.smbyoc.version": "0.1.0", inventory.ACCEPT_BIND_TO_PORT_LABEL: "true"}


def test_rows_one_per_tag_with_staleness_capabilities_and_the_engines_platform() -> None:
    images = [
        attrs(["smbyoc/serve:cpu", "mine:v1"], SERVE_LABELS),
        attrs(["smbyoc/serve:mme"], {**SERVE_LABELS, builder.MULTI_MODELS_LABEL: "true", "org.smbyoc.source": "old"}),
        attrs(["smbyoc/train:arm"], {"org.smbyoc.kind": "train", "org.smbyoc.variant": "arm64",
                                     "org.smbyoc.platform": "linux/amd64"}, arch="arm64"),
        attrs(["python:3.11"], {"maintainer": "x"}),          # not smbyoc's
        attrs([], SERVE_LABELS), attrs(["<none>:<none>"], SERVE_LABELS),  # untagged
        attrs(["nolabels:1"], None),
    ]
    found = inventory.rows(images, "current")
    assert [r.tag for r in found] == ["mine:v1", "smbyoc/serve:cpu", "smbyoc/serve:mme", "smbyoc/train:arm"]
    by_tag = {r.tag: r for r in found}
    assert not by_tag["smbyoc/serve:cpu"].stale and by_tag["smbyoc/serve:mme"].stale
    assert by_tag["smbyoc/serve:cpu"].capabilities == ("accept-bind-to-port",)
    assert by_tag["smbyoc/serve:mme"].capabilities == ("multi-models", "accept-bind-to-port")
    assert by_tag["smbyoc/train:arm"].platform == "linux/arm64"  # what the engine says, not the label
    assert by_tag["smbyoc/train:arm"].stale  # no source label: built by no smbyoc we know


def test_table_and_json_shape() -> None:
    found = inventory.rows([attrs(["smbyoc/serve:ei"], {**SERVE_LABELS, builder.REQUESTED_VARIANT_LABEL: "ei"}),
                            attrs(["smbyoc/train:cpu"], {**SERVE_LABELS, "org.smbyoc.kind": "train"},
                                  size=1_114_000_000)],
                           "current")
    text = inventory.table(found).splitlines()
    assert text[0].split() == ["TAG", "VARIANT", "KIND", "PLATFORM", "SIZE", "CREATED", "SOURCE", "STALE",
                               "CAPABILITIES"]
    assert "cpu (asked: ei)" in text[1] and "316 MB" in text[1] and "2026-12-01 10:00:00" in text[1]
    assert "1.11 GB" in text[2]
    row = json.loads(json.dumps(found[0].to_dict()))
    assert row["tag"] == "smbyoc/serve:ei" and row["stale"] is False and row["capabilities"] == ["accept-bind-to-port"]
    assert set(row) >= {"tag", "variant", "kind", "platform", "size_bytes", "created", "source", "stale"}


def invoke(args: list[str]) -> Any:
    _register()  # through the group, as a user runs it (-h and the group's settings apply)
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("args, culprit", [
    (["--list", "--kind", "serve"], "--kind"), (["--list", "--no-cache"], "--no-cache"),
    (["--list", "--variant", "ei"], "--variant"), (["--list", "-t", "x:1"], "--tag"),
])
def test_list_takes_only_json(args: list[str], culprit: str) -> None:
    result = invoke(["build", *args])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"--list: builds nothing; it takes only --json, not {culprit}" in result.output


def test_json_needs_list_and_a_build_needs_kind() -> None:
    result = invoke(["build", "--json"])
    assert result.exit_code == 1 and "--json: only with --list" in result.output
    result = invoke(["build"])
    assert result.exit_code == 2 and "Missing option '--kind'" in result.output


# ---------------------------------------------------------------------------------------------- preflight


class Engine:
    """An engine that knows some images and its own architecture, and no registry."""

    def __init__(self, arch: str = "x86_64", images: dict[str, str] | None = None) -> None:
        self.arch = arch
        self.known = images or {}
        self.images = self
        self.api = self

    def info(self) -> dict[str, str]:
        return {"Architecture": self.arch}

    def get(self, name: str) -> Any:
        import docker.errors

        if name not in self.known:
            raise docker.errors.ImageNotFound(name)
        return SimpleNamespace(attrs={"Architecture": self.known[name], "Os": "linux"})

    def inspect_distribution(self, name: str) -> None:
        import docker.errors

        raise docker.errors.APIError("x", explanation="dial tcp: lookup registry-1.docker.io: no such host")


def test_arm64_without_base_and_qemu_names_both_in_one_line(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "BINFMT_DIR", tmp_path)
    with pytest.raises(BuildError) as e:
        builder.preflight(load_variant("arm64"), "serve", Engine())
    message = str(e.value)
    assert "\n" not in message and message.startswith("arm64: base image arm64v8/python:3.11-slim-bookworm is not")
    assert "scripts/build-base-image --arch arm64" in message and "--base-image" in message
    assert "; and building linux/arm64 images on this x86_64 engine needs qemu user emulation" in message
    assert "install qemu-user-static and register its handler (scripts/setup-qemu does both)" in message
    # with the base image here, only qemu is missing
    with pytest.raises(BuildError, match=r"^arm64: building linux/arm64 images .* needs qemu"):
        builder.preflight(load_variant("arm64"), "serve", Engine(images={"smbyoc/base:bookworm-arm64": "arm64"}))


def test_cuda_builds_on_the_local_debian_base_and_says_how_to_make_it() -> None:
    # CUDA comes from NVIDIA's PyPI wheels: the cuda variant needs no nvidia/cuda base image (docs/images.md)
    with pytest.raises(BuildError) as e:
        builder.preflight(load_variant("cuda"), "train", Engine())
    assert "\n" not in str(e.value)
    assert "run scripts/build-base-image (makes smbyoc/base:bookworm) or pass --base-image" in str(e.value)
    assert builder.preflight(load_variant("cuda"), "serve",
                             Engine(images={"smbyoc/base:bookworm": "amd64"})) == "smbyoc/base:bookworm"


def test_unreachable_repository_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.images import repositories

    def unreachable(url: str, what: str, timeout: float = 10.0) -> None:
        raise BuildError(f"{what} {url} cannot be reached from this machine (no route)")

    monkeypatch.setattr(repositories, "check_reachable", unreachable)
    with pytest.raises(BuildError, match=r"^neuron: the package repository https://pip.repos.neuron.amazonaws.com "
                                         r"cannot be reached .*make it reachable here"):
        builder.preflight(load_variant("neuron"), "serve", Engine())


def test_damaged_cached_wheels_are_found(tmp_path: Path) -> None:
    good = tmp_path / "good-1.0-py3-none-any.whl"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("good/__init__.py", "")
    (tmp_path / "cut-1.0-py3-none-any.whl").write_bytes(good.read_bytes()[:-30])
    assert [p.name for p in wheelhouse.unreadable_wheels(tmp_path)] == ["cut-1.0-py3-none-any.whl"]


# ---------------------------------------------------------------------------------------------- platform check


@pytest.mark.parametrize("instance_type, platform", [
    ("ml.c7g.xlarge", "linux/arm64"), ("ml.m6g.large", "linux/arm64"), ("ml.r6g.2xlarge", "linux/arm64"),
    ("ml.c6gn.xlarge", "linux/arm64"), ("ml.m5.large", "linux/amd64"), ("ml.g5.xlarge", "linux/amd64"),
    ("ml.inf2.xlarge", "linux/amd64"), ("local", None), ("local_gpu", None), (None, None),
])
def test_instance_platform(instance_type: str | None, platform: str | None) -> None:
    assert image_platform.instance_platform(instance_type) == platform


def test_image_platform_uses_dockers_names() -> None:
    assert image_platform.image_platform({"Os": "linux", "Architecture": "arm64"}) == "linux/arm64"
    assert image_platform.image_platform({"Architecture": "x86_64"}) == "linux/amd64"
    assert image_platform.image_platform({}) == "linux/amd64"


def test_check_refuses_either_way_in_one_line_naming_both() -> None:
    with pytest.raises(ConfigError) as e:
        image_platform.check("smbyoc/serve:cpu", {"Architecture": "amd64"}, "ml.c7g.xlarge")
    assert str(e.value).startswith("image smbyoc/serve:cpu is linux/amd64 but ml.c7g.xlarge is a Graviton "
                                   "(linux/arm64) instance type: SageMaker would fail to start it")
    assert "--variant arm64" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^image a:1 is linux/arm64 but ml.m5.large is an x86 \(linux/amd64\) "
                                          r"instance type: .*ml.c7g.xlarge"):
        image_platform.check("a:1", {"Architecture": "arm64"}, "ml.m5.large")
    image_platform.check("a:1", {"Architecture": "arm64"}, "ml.c7g.xlarge")
    image_platform.check("a:1", {"Architecture": "amd64"}, "ml.m5.large")
    image_platform.check("a:1", {"Architecture": "arm64"}, "local")  # the engine runs what it can


def test_require_image_checks_the_platform_only_when_given_an_instance_type() -> None:
    engine = Engine(images={"arm:1": "arm64"})
    assert containers.require_image(engine, "arm:1") is not None
    assert containers.require_image(engine, "arm:1", instance_type="ml.c7g.xlarge") is not None
    with pytest.raises(ConfigError, match="image arm:1 is linux/arm64 but ml.m5.xlarge"):
        containers.require_image(engine, "arm:1", instance_type="ml.m5.xlarge")


def test_graviton_instance_type_selects_the_arm64_default_image() -> None:
    assert default_variant("ml.c7g.xlarge") == "arm64"
    assert default_variant("ml.m5.large") == "cpu" and default_variant("local") == "cpu" and default_variant() == "cpu"
