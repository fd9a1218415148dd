"""Render a new bring-your-own-container project (``smbyoc init``) into a directory.

The templates live in ``smbyoc/templates/scaffold/``; every file there becomes one file of the project:
a trailing ``.tmpl`` is dropped (it keeps linters and test collectors off the templates), a leading
``dot-`` becomes ``.`` (``dot-github/`` → ``.github/``), and ``{{smbyoc:KEY}}`` is replaced by the
project's value for ``KEY`` (:meth:`ProjectSpec.variables`; an unknown key is a bug, reported as such).

Nothing is half-created: the files are written into a hidden temporary directory beside the target and
moved into place only when all are written, and a target that exists and is not empty is refused before
anything is written.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.scaffold.names import ProjectName

log = logging.getLogger(__name__)

#: The CI systems ``--ci`` can name, and the files only that CI needs (paths in the project).
CI_FILES: Mapping[str, tuple[str, ...]] = {
    "codebuild": ("buildspec.yml", "cloudformation/pipeline.yaml"),
    "github": (".github/workflows/build.yml", "cloudformation/github-role.yaml"),
}
DEFAULT_CI = frozenset(CI_FILES)
#: AWS region names: ``us-east-1``, ``eu-central-2``, ``us-gov-west-1``, ``cn-north-1``...
REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
#: The extras a project's CI installs smbyoc with: the Docker emulator (``docker``), boto3 for ECR (``s3``).
SMBYOC_EXTRAS = "docker,s3"
PLACEHOLDER = re.compile(r"\{\{smbyoc:([a-z_]+)\}\}")
TEMPLATE_SUFFIX = ".tmpl"
DOT_PREFIX = "dot-"


def templates_dir() -> Path:
    """The scaffold's template tree inside the installed package."""
    return Path(str(resources.files("smbyoc") / "templates" / "scaffold"))


def parse_ci(text: str) -> frozenset[str]:
    """``--ci``: a comma-separated subset of ``codebuild``, ``github``, or ``none``."""
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if items == ["none"]:
        return frozenset()
    unknown = [item for item in items if item not in CI_FILES]
    if unknown or not items:
        raise ConfigError(f"{text!r}: expected a comma-separated list of {', '.join(CI_FILES)}, or none",
                          key="--ci")
    return frozenset(items)


def _smbyoc_requirement(version: str) -> str:
    """What a project's CI installs: pinned to this smbyoc's version when that is a public release."""
    pinned = re.fullmatch(r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?", version)
    return f"smbyoc[{SMBYOC_EXTRAS}]=={version}" if pinned else f"smbyoc[{SMBYOC_EXTRAS}]"


@dataclass(frozen=True)
class ProjectSpec:
    """What ``smbyoc init`` renders: the checked name, the region of the CI files, the CI systems."""

    name: ProjectName
    region: str
    ci: frozenset[str] = field(default=DEFAULT_CI)
    smbyoc_version: str = "0.0.0+unknown"

    @classmethod
    def create(cls, name: str, *, region: str, ci: Iterable[str] | str = DEFAULT_CI,
               smbyoc_version: str | None = None) -> ProjectSpec:
        """A checked spec: ConfigError naming ``NAME``, ``--region`` or ``--ci`` (in that order) when one is not
        usable. ``ci``: CI names, or ``--ci``'s comma-separated text."""
        project = ProjectName.parse(name)
        if not REGION.fullmatch(region):
            raise ConfigError(f"{region!r} is not an AWS region name (like us-east-1)", key="--region")
        chosen = parse_ci(ci) if isinstance(ci, str) else frozenset(ci)
        unknown = sorted(chosen - set(CI_FILES))
        if unknown:
            raise ConfigError(f"unknown CI {unknown[0]!r} (known: {', '.join(CI_FILES)})", key="--ci")
        if smbyoc_version is None:
            import smbyoc

            smbyoc_version = smbyoc.__version__
        return cls(project, region, chosen, smbyoc_version)

    def variables(self) -> dict[str, str]:
        """The values of the templates' ``{{smbyoc:KEY}}`` placeholders."""
        train_repository, serve_repository = self.name.ecr_repositories
        return {
            "name": self.name.name,
            "python_name": self.name.python_name,
            "region": self.region,
            "train_image": self.name.image("train"),
            "serve_image": self.name.image("serve"),
            "train_repository": train_repository,
            "serve_repository": serve_repository,
            "endpoint_name": self.name.endpoint_name,
            "codebuild_project": self.name.codebuild_project,
            "pipeline_stack": f"{self.name.name}-pipeline",
            "endpoint_stack": f"{self.name.name}-endpoint",
            "github_role_stack": f"{self.name.name}-github-role",
            "smbyoc_version": self.smbyoc_version,
            "smbyoc_requirement": _smbyoc_requirement(self.smbyoc_version),
        }

    def wants(self, relative: str) -> bool:
        """Whether the project file ``relative`` belongs to this project (CI files only for chosen CIs)."""
        return all(ci in self.ci for ci, files in CI_FILES.items() if relative in files)


def render_text(text: str, variables: Mapping[str, str], *, source: str) -> str:
    """Replace every ``{{smbyoc:KEY}}``; an unknown key is a template bug (SmbyocError naming the file)."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in variables:
            raise SmbyocError(f"template {source}: unknown placeholder {match.group(0)} (a bug in smbyoc)")
        return variables[key]

    return PLACEHOLDER.sub(value, text)


def project_path(template: Path) -> Path:
    """Where a template file (relative to the template tree) goes in the project."""
    parts = ["." + p[len(DOT_PREFIX):] if p.startswith(DOT_PREFIX) else p for p in template.parts]
    if parts[-1].endswith(TEMPLATE_SUFFIX):
        parts[-1] = parts[-1][: -len(TEMPLATE_SUFFIX)]
    return Path(*parts)


def _templates(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def render_files(spec: ProjectSpec, root: Path | None = None) -> dict[Path, str]:
    """Every file of the project (relative path → text), in a stable order."""
    root = root or templates_dir()
    variables = spec.variables()
    files: dict[Path, str] = {}
    for template in _templates(root):
        relative = project_path(template.relative_to(root))
        if not spec.wants(relative.as_posix()):
            continue
        files[relative] = render_text(template.read_text(encoding="utf-8"), variables,
                                      source=template.relative_to(root).as_posix())
    return files


def check_target(directory: Path) -> None:
    """Refuse a target that exists and is not an empty directory, or whose parent does not exist."""
    if directory.is_symlink():
        raise ConfigError("is a symbolic link; give the directory itself", key=str(directory))
    if directory.exists() and not directory.is_dir():
        raise ConfigError("exists and is not a directory; smbyoc init creates a new project directory",
                          key=str(directory))
    if directory.is_dir():
        entries = sorted(p.name for p in directory.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConfigError(f"is not empty ({len(entries)} entries: {shown}); smbyoc init writes a new "
                              "project only into a new or empty directory", key=str(directory))
    if not directory.parent.is_dir():
        raise ConfigError(f"parent directory {directory.parent} does not exist", key=str(directory))


def _staging_dir(directory: Path) -> Path:
    """A new hidden directory beside ``directory``, with the permissions a plain ``mkdir`` gives."""
    while True:
        staging = directory.parent / f".{directory.name}.smbyoc-init-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot write in {directory.parent}: {e.strerror}", key=str(directory)) from e
        return staging


def _publish(staging: Path, directory: Path) -> None:
    """Put the staged project at ``directory``. A new directory is the staging directory renamed, in one step;
    an existing empty one (perhaps the current directory, which must stay the same directory) gets the staged
    entries moved in, all of them or, on a failure, none."""
    if not directory.exists():
        os.rename(staging, directory)
        return
    moved: list[Path] = []
    try:
        for entry in sorted(staging.iterdir()):
            target = directory / entry.name
            if target.exists() or target.is_symlink():
                raise FileExistsError(errno.EEXIST, "appeared while the project was written", str(target))
            os.rename(entry, target)
            moved.append(target)
    except BaseException:
        for target in reversed(moved):
            try:
                os.rename(target, staging / target.name)
            except OSError:
                shutil.rmtree(target, ignore_errors=True)
        raise


def render_project(spec: ProjectSpec, directory: Path) -> list[Path]:
    """Write the project into ``directory`` (new or empty); returns the files written, relative to it.

    The files go to a temporary directory beside ``directory`` first and are moved into place only when all
    are written (:func:`_publish`), so a failure leaves nothing behind.
    """
    directory = Path(os.path.abspath(directory))
    check_target(directory)
    files = render_files(spec)
    staging = _staging_dir(directory)
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        _publish(staging, directory)
    except OSError as e:
        raise ConfigError(f"cannot write the project: {e.strerror or e}", key=str(directory)) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was renamed into place
    log.debug("wrote %d files into %s", len(files), directory)
    return list(files)
