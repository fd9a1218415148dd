"""The image variants (cpu, cuda, arm64, ei, neuron), read from ``images/<variant>/variant.json``.

One source of truth: the repository's ``Dockerfile.*`` and ``images/`` are the files; the package ships
them as package data through the links under ``smbyoc/templates/docker`` (a wheel holds copies), so an
installed smbyoc builds the same images as a checkout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from smbyoc.errors import BuildError, ConfigError

Kind = Literal["train", "serve"]
KINDS: tuple[Kind, ...] = ("train", "serve")
VARIANT_NAMES = ("cpu", "cuda", "arm64", "ei", "neuron")

_ARCH = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
#: The oldest manylinux tag pip should still accept (manylinux2014 = glibc 2.17).
_OLDEST_GLIBC_MINOR = 17


def data_dir() -> Path:
    """Directory holding ``Dockerfile.*`` and ``images/`` (inside the installed package)."""
    return Path(str(resources.files("smbyoc") / "templates" / "docker"))


@dataclass(frozen=True)
class AptRepository:
    """A Debian package repository the host fetches ``.deb`` files from (Neuron runtime)."""

    url: str
    suite: str
    component: str
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    platform: str
    python_version: str
    glibc: str
    dockerfiles: Mapping[str, str]
    base_images: Mapping[str, str]
    requirements: Mapping[str, str]
    directory: Path
    local_base_image: str | None = None
    pip_extra_index_urls: tuple[str, ...] = ()
    apt_repository: AptRepository | None = None
    discontinued: str | None = None
    #: A migration path (``ei``): the variant whose image this one builds, and why, printed in one line.
    builds_as: str | None = None
    migration: str | None = None
    #: Environment variables set in every image of the variant (``cuda``: what GPU hosts and the NVIDIA wheels'
    #: libraries need), appended to the Dockerfile by :func:`smbyoc.images.context.dockerfile_text`.
    env: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.dockerfiles)

    @property
    def image_variant(self) -> str:
        """The variant the image really is (``cpu`` for ``ei``): its ``org.smbyoc.variant`` label."""
        return self.builds_as or self.name

    @property
    def arch(self) -> str:
        """Machine name as in wheel tags and ``uname -m`` (``x86_64``, ``aarch64``)."""
        return _ARCH[self.platform]

    def check_kind(self, kind: str) -> None:
        if kind not in self.dockerfiles:
            hint = ""
            if self.discontinued:
                hint = f" ({self.name} is a serving-only migration path; train with --variant cpu)"
            raise BuildError(f"variant {self.name} has no {kind} image; it builds: "
                             f"{', '.join(self.kinds)}{hint}")

    def dockerfile(self, kind: str) -> Path:
        self.check_kind(kind)
        return self.directory.parent.parent / self.dockerfiles[kind]

    def requirements_file(self, kind: str) -> Path:
        self.check_kind(kind)
        return (self.directory / self.requirements[kind]).resolve()

    def base_image(self, kind: str) -> str:
        self.check_kind(kind)
        return self.base_images[kind]

    def pip_platforms(self) -> list[str]:
        """Wheel platform tags the image accepts, newest first (pip does not expand them itself)."""
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, _OLDEST_GLIBC_MINOR - 1, -1)]
        return [*tags, f"manylinux2014_{self.arch}"]

    @property
    def python_tag(self) -> str:
        return "cp" + self.python_version.replace(".", "")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_table(data: Mapping[str, Any], source: str) -> dict[str, str]:
    value = data.get("env", {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError("must be an object mapping variable names to strings", source=source, key="env")
    for name, text in value.items():
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not an environment variable name", source=source, key="env")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ConfigError(f"the value of {name} has a control character", source=source, key="env")
    return dict(value)


def _str_map(data: Mapping[str, Any], key: str, source: str) -> dict[str, str]:
    value = data.get(key)
    if not isinstance(value, dict) or not value or not all(
            k in KINDS and isinstance(v, str) for k, v in value.items()):
        raise ConfigError("must be an object mapping train/serve to strings", source=source, key=key)
    return dict(value)


def load_variant(name: str, root: Path | None = None) -> Variant:
    """The variant ``name`` from ``<root>/images/<name>/variant.json`` (root: :func:`data_dir`)."""
    if name not in VARIANT_NAMES:
        raise ConfigError(f"unknown variant {name!r}; choose one of {', '.join(VARIANT_NAMES)}",
                          key="variant")
    directory = (root or data_dir()) / "images" / name
    path = directory / "variant.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the variant table: {e}", source=str(path)) from e
    source = str(path)
    for key in ("summary", "platform", "python_version", "glibc"):
        if not isinstance(data.get(key), str):
            raise ConfigError("missing or not a string", source=source, key=key)
    if data["platform"] not in _ARCH:
        raise ConfigError(f"{data['platform']!r} is not one of {', '.join(_ARCH)}", source=source,
                          key="platform")
    apt = data.get("apt_repository")
    apt_repo = None
    if apt is not None:
        try:
            apt_repo = AptRepository(url=str(apt["url"]).rstrip("/"), suite=str(apt["suite"]),
                                     component=str(apt["component"]),
                                     packages=tuple(str(p) for p in apt["packages"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"needs url, suite, component, packages ({e})", source=source,
                              key="apt_repository") from e
    dockerfiles = _str_map(data, "dockerfile", source)
    builds_as = data.get("builds_as")
    if builds_as is not None and (builds_as not in VARIANT_NAMES or builds_as == name):
        raise ConfigError(f"{builds_as!r} is not another variant ({', '.join(VARIANT_NAMES)})", source=source,
                          key="builds_as")
    if builds_as is not None and not isinstance(data.get("migration"), str):
        raise ConfigError("a variant with builds_as needs the reason as a string", source=source, key="migration")
    variant = Variant(
        name=name, summary=data["summary"], platform=data["platform"],
        python_version=data["python_version"], glibc=data["glibc"], dockerfiles=dockerfiles,
        base_images=_str_map(data, "base_image", source),
        requirements=_str_map(data, "requirements", source), directory=directory,
        local_base_image=data.get("local_base_image"),
        pip_extra_index_urls=tuple(data.get("pip_extra_index_urls", ())),
        apt_repository=apt_repo, discontinued=data.get("discontinued"), builds_as=builds_as,
        migration=data.get("migration"), env=_env_table(data, source), raw=data)
    for kind in dockerfiles:
        if set(variant.base_images) != set(dockerfiles) or set(variant.requirements) != set(dockerfiles):
            raise ConfigError("dockerfile, base_image and requirements must name the same kinds",
                              source=source)
        if not variant.requirements_file(kind).is_file():
            raise ConfigError(f"requirements file {variant.requirements_file(kind)} is missing",
                              source=source, key="requirements")
    return variant


def all_variants(root: Path | None = None) -> list[Variant]:
    return [load_variant(name, root) for name in VARIANT_NAMES]
