"""Assemble an image's build context in a directory: Dockerfile, wheelhouse, entry point, user code.

Layout (what the Dockerfiles expect)::

    Dockerfile            the variant's Dockerfile (+ ``COPY code/ /opt/ml/code/`` when code is baked in)
    entrypoint            the exec-form entry point
    requirements.txt      a record of what was resolved (the requirement files and smbyoc's own needs)
    wheelhouse/deps/      every third-party wheel, resolved on the host
    wheelhouse/smbyoc/    the smbyoc wheel
    code/                 the user's code (only with ``code_dir``)
    debs/                 host-fetched .deb files (variants with an ``apt_repository``; else empty)
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from smbyoc.errors import BuildError
from smbyoc.images import repositories, wheelhouse
from smbyoc.images.variants import Variant, data_dir
from smbyoc.images.wheelhouse import Progress

logger = logging.getLogger(__name__)

#: What is never copied from the user's code directory into the image.
IGNORED = ("__pycache__", "*.pyc", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache",
           ".ipynb_checkpoints", ".DS_Store")
CODE_DIR_IN_IMAGE = "/opt/ml/code"


@dataclass(frozen=True)
class ContextSpec:
    """What goes into one build context."""

    variant: Variant
    kind: str
    code_dir: Path | None = None
    requirements: Path | None = None

    def user_requirements(self) -> Path | None:
        """``--requirements``, else ``<code_dir>/requirements.txt`` when it exists."""
        if self.requirements is not None:
            return self.requirements
        if self.code_dir is not None and (self.code_dir / "requirements.txt").is_file():
            return self.code_dir / "requirements.txt"
        return None

    def validate(self) -> None:
        self.variant.check_kind(self.kind)
        if self.code_dir is not None and not self.code_dir.is_dir():
            raise BuildError(f"--context {self.code_dir}: not a directory")
        if self.requirements is not None and not self.requirements.is_file():
            raise BuildError(f"--requirements {self.requirements}: no such file")


@dataclass(frozen=True)
class BuildContext:
    path: Path
    dockerfile: str
    wheels: list[Path] = field(default_factory=list)
    smbyoc_wheel: Path | None = None


def dockerfile_text(spec: ContextSpec) -> str:
    """The variant's Dockerfile, with the user code layer appended when code is baked in."""
    text = spec.variant.dockerfile(spec.kind).read_text(encoding="utf-8")
    if spec.code_dir is not None:
        text = text.rstrip("\n") + (
            "\n\n# Added by smbyoc build: the user's code, the one thing an image may hold under /opt/ml.\n"
            f"COPY code/ {CODE_DIR_IN_IMAGE}/\n")
    return text


def assemble(spec: ContextSpec, dest: Path, *, cache: Path | None = None,
             progress: Progress | None = None) -> BuildContext:
    """Write the build context for ``spec`` into the (empty or new) directory ``dest``."""
    spec.validate()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(dockerfile_text(spec), encoding="utf-8")
    entrypoint = dest / "entrypoint"
    shutil.copyfile(data_dir() / "images" / "entrypoint", entrypoint)
    entrypoint.chmod(0o755)

    requirement_files = [spec.variant.requirements_file(spec.kind)]
    user = spec.user_requirements()
    if user is not None:
        requirement_files.append(user.resolve())
    own = wheelhouse.smbyoc_runtime_requirements()
    record = [f"# resolved by smbyoc build for {spec.variant.name}/{spec.kind}", *own]
    for path in requirement_files:
        record += [f"# from {path}", path.read_text(encoding="utf-8").rstrip("\n")]
    (dest / "requirements.txt").write_text("\n".join(record) + "\n", encoding="utf-8")

    wheels = wheelhouse.resolve_wheelhouse(spec.variant, requirement_files, own, dest / "wheelhouse" / "deps",
                                           cache=cache, progress=progress)
    smbyoc_wheel = wheelhouse.build_smbyoc_wheel(dest / "wheelhouse" / "smbyoc", cache=cache,
                                                 progress=progress)
    debs = dest / "debs"
    debs.mkdir(exist_ok=True)
    if spec.variant.apt_repository is not None:
        if progress:
            progress(f"fetching {', '.join(spec.variant.apt_repository.packages)} from "
                     f"{spec.variant.apt_repository.url}")
        repositories.fetch_debs(spec.variant.apt_repository, spec.variant.arch, debs)
    if spec.code_dir is not None:
        shutil.copytree(spec.code_dir, dest / "code", ignore=shutil.ignore_patterns(*IGNORED),
                        dirs_exist_ok=False)
    return BuildContext(path=dest, dockerfile="Dockerfile", wheels=wheels, smbyoc_wheel=smbyoc_wheel)
