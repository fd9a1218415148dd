"""Assemble an image's build context in a directory: Dockerfile, wheelhouse, entry point, user code.

Layout (what the Dockerfiles expect)::

    Dockerfile            the variant's Dockerfile (+ ``COPY code/ /opt/ml/code/`` when code is baked in)
    entrypoint            the exec-form entry point
    requirements.txt      a record of what was resolved (the requirement files and smbyoc's own needs)
    wheelhouse/deps/      every third-party wheel, resolved on the host
    wheelhouse/smbyoc/    the smbyoc wheel
    code/                 the user's code (only with ``code_dir``)
    debs/                 host-fetched .deb files (variants with an ``apt_repository``; else empty)

:func:`emit` writes the same context for a plain ``docker build DIR`` (``smbyoc build --emit-context``):
what ``smbyoc build`` passes through the Engine API is baked into the files instead (the build args as the
``ARG`` defaults, the labels as a ``LABEL`` instruction), plus a README.md and a .dockerignore. It is
assembled in a temporary sibling of DIR and renamed into place, so DIR is never half-written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import smbyoc
from smbyoc.errors import BuildError, ConfigError
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


def env_instruction(env: Mapping[str, str]) -> str:
    """One ``ENV`` instruction setting ``env`` (values quoted, ``$`` not expanded); empty for no variables."""
    if not env:
        return ""
    pairs = [f"{name}={_quoted(value)}" for name, value in env.items()]
    return "ENV " + " \\\n    ".join(pairs) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def dockerfile_text(spec: ContextSpec) -> str:
    """The variant's Dockerfile, with the variant's environment (``env`` in its variant.json) and the user code
    layer appended; a variant without ``env`` (cpu) gets its Dockerfile unchanged."""
    text = spec.variant.dockerfile(spec.kind).read_text(encoding="utf-8")
    env = env_instruction(spec.variant.env)
    if env:
        text = text.rstrip("\n") + (
            f"\n\n# Added by smbyoc build: the {spec.variant.name} variant's environment (images/{spec.variant.name}/"
            "variant.json \"env\").\n" + env)
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


# --- a self-contained context for `docker build DIR` (smbyoc build --emit-context) -------------------------

#: Characters allowed in a value baked in as an ``ARG`` default (image references, kinds): no quoting needed.
_ARG_VALUE = re.compile(r"[A-Za-z0-9._/:@+-]+")
_OPTION = "--emit-context"


def bake_build_args(text: str, build_args: Mapping[str, str]) -> str:
    """``text`` with each ``ARG NAME[=default]`` line of ``build_args`` set to its value, so a build with no
    ``--build-arg`` gets what ``smbyoc build`` passes through the API (and ``--build-arg`` still overrides)."""
    for name, value in build_args.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BuildError(f"build argument name {name!r} is not a Dockerfile ARG name")
        if not _ARG_VALUE.fullmatch(value):
            raise BuildError(f"build argument {name}={value!r} cannot be written as an ARG default "
                             "(allowed: letters, digits and ._/:@+-)")
        line = f"ARG {name}={value}"  # a plain replacement: neither part can hold a backslash
        text, count = re.subn(rf"^ARG {re.escape(name)}(=[^\n]*)?$", line, text, flags=re.M)
        if count == 0:
            raise BuildError(f"the Dockerfile declares no ARG {name} to give the value {value}")
    return text


def _label_word(text: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BuildError(f"image label {what} {text!r} has a control character; a Dockerfile LABEL cannot hold it")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def label_instruction(labels: Mapping[str, str]) -> str:
    """One ``LABEL`` instruction setting ``labels`` (quoted: no variable expansion, any printable text)."""
    if not labels:
        return ""
    pairs = [f"{_label_word(k, 'key')}={_label_word(v, k)}" for k, v in sorted(labels.items())]
    return "LABEL " + " \\\n      ".join(pairs) + "\n"


def emitted_dockerfile(spec: ContextSpec, build_args: Mapping[str, str], labels: Mapping[str, str],
                       tag: str) -> str:
    """The Dockerfile of an emitted context: :func:`dockerfile_text` with the build args as ARG defaults and
    the labels as a final LABEL instruction (where the Engine API puts labels it is given)."""
    header = (f"# Emitted by `smbyoc build --emit-context` (smbyoc {smbyoc.__version__}, "
              f"{spec.variant.name}/{spec.kind}, {spec.variant.platform}).\n"
              f"# Build this directory as it is: {build_command(spec.variant.platform, tag, 'DIR')}\n"
              "# (README.md beside this file has the buildx form and what each part is).\n\n")
    body = bake_build_args(dockerfile_text(spec), build_args).rstrip("\n")
    labels_text = label_instruction(labels)
    if labels_text:
        body += ("\n\n# Added by smbyoc build --emit-context: the labels `smbyoc build` sets through the Engine API.\n"
                 + labels_text.rstrip("\n"))
    return header + body + "\n"


def _platform_flag(platform: str) -> str:
    return f" --platform {platform}" if platform != "linux/amd64" else ""


def build_command(platform: str, tag: str, path: str) -> str:
    """The plain ``docker build`` command for a context of an image for ``platform``."""
    return f"docker build{_platform_flag(platform)} -t {tag} {path}"


def _buildx_command(platform: str, tag: str, path: str) -> str:
    return (f"docker buildx build{_platform_flag(platform)} --provenance=false --output type=docker "
            f"-t {tag} {path}")


def context_readme(spec: ContextSpec, build_args: Mapping[str, str], labels: Mapping[str, str],
                   tag: str) -> str:
    """README.md of an emitted context: how to build it, and what is in it."""
    variant = spec.variant
    other_arch = ("" if variant.platform != "linux/amd64" else
                  "\nOn an arm64 machine (Apple silicon, Graviton) add `--platform linux/amd64`: the wheelhouse "
                  "holds x86_64 wheels.\n")
    cross = ("" if variant.platform == "linux/amd64" else
             f"\n`--platform {variant.platform}`: the wheelhouse holds {variant.arch} wheels. On an x86_64 machine "
             "the build runs under qemu user emulation (`apt-get install qemu-user-static` and a registered "
             "binfmt_misc handler: scripts/setup-qemu).\n")
    args = "\n".join(f"* `{k}` = `{v}`" for k, v in build_args.items())
    label_lines = "\n".join(f"  * `{k}` = `{v}`" for k, v in sorted(labels.items()))
    code = ("* `code/`: your code, copied to /opt/ml/code.\n" if spec.code_dir is not None else "")
    return f"""# Build context: SageMaker {spec.kind} image, variant {variant.name} ({variant.platform})

Emitted by `smbyoc build --kind {spec.kind} --variant {variant.name} --emit-context DIR` (smbyoc
{smbyoc.__version__}). It is self-contained: building it needs no smbyoc and no network (the Python
packages are in `wheelhouse/`), only the base image.

## Build

    {build_command(variant.platform, tag, '.')}

With BuildKit (`docker buildx`, e.g. AWS CodeBuild or GitHub Actions):

    {_buildx_command(variant.platform, tag, '.')}

`--provenance=false`: SageMaker rejects an image whose manifest is an OCI image index, which is what
buildx makes when it attaches provenance attestations. `--output type=docker` loads the image into the
local engine, whose `docker push` sends a Docker V2 schema 2 manifest.
{other_arch}{cross}
Either gives the image `smbyoc build` gives for the same options: the same entry point, command,
environment, labels, installed packages and files. Expect another image ID: creation times are part of
it (only a build that reuses every cached layer of an earlier one, on the same engine, gets the same).

## Build arguments (their defaults here are what smbyoc build chose)

{args}

Override with `--build-arg NAME=VALUE`, e.g. `--build-arg BASE_IMAGE=python:3.11-slim-bookworm`.

## What is here

* `Dockerfile`: the {variant.name} {spec.kind} Dockerfile, with the labels smbyoc sets:
{label_lines}
* `wheelhouse/deps/`: every third-party Python package, resolved for the image
  (Python {variant.python_version}, {variant.arch}); installed with `pip install --no-index`.
* `wheelhouse/smbyoc/`: the smbyoc runtime wheel.
* `requirements.txt`: a record of what was resolved into `wheelhouse/deps/`.
* `entrypoint`: the exec-form entry point (`train` or `serve`).
* `debs/`: .deb packages the Dockerfile installs (Neuron runtime; empty otherwise).
{code}* `.dockerignore`: keeps this README and Python caches out of the build.
"""


def dockerignore_text() -> str:
    """.dockerignore of an emitted context: this README, and what :data:`IGNORED` keeps out of ``code/``."""
    return "\n".join(["# Written by smbyoc build --emit-context.", "README.md", ".dockerignore",
                      *(f"**/{pattern}" for pattern in IGNORED)]) + "\n"


def check_emit_destination(dest: Path, *, force: bool = False, code_dir: Path | None = None) -> Path:
    """The absolute directory to emit into, after the checks that need nothing slow: not a file or link,
    empty unless ``force``, its parent exists and is writable, and it neither holds nor lies inside the
    code directory or holds the current directory (which ``force`` would delete)."""
    key = f"{_OPTION} {dest}"
    if dest.is_symlink():
        raise ConfigError("is a symbolic link; name the directory itself", key=key)
    path = Path(os.path.abspath(dest))
    if not path.name or path.resolve() == Path(path.anchor):
        raise ConfigError("names no directory that can be replaced", key=key)
    if path.exists() and not path.is_dir():
        raise ConfigError("exists and is not a directory", key=key)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ConfigError("exists and is not empty; pass --force to replace it", key=key)
    if not path.parent.is_dir():
        raise ConfigError(f"its parent directory {path.parent} does not exist", key=key)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in its parent directory {path.parent}", key=key)
    real = path.resolve()
    if code_dir is not None:
        code = code_dir.resolve()
        if real == code or real.is_relative_to(code):
            raise ConfigError(f"lies inside --context {code_dir}, which would then copy itself", key=key)
        if code.is_relative_to(real):
            raise ConfigError(f"holds --context {code_dir}", key=key)
    if Path.cwd().resolve().is_relative_to(real):
        raise ConfigError("is or holds the current directory", key=key)
    return path


def _replace_directory(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an existing ``dest`` is moved aside first and deleted after."""
    old: Path | None = None
    try:
        if dest.is_dir() and any(dest.iterdir()):
            old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
            dest.rename(old)
        try:
            new.rename(dest)
        except OSError:
            if old is not None:
                old.rename(dest)
                old = None
            raise
    except OSError as e:
        raise BuildError(f"{_OPTION} {dest}: cannot move the assembled context into place: "
                         f"{e.strerror or e}") from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def emit(spec: ContextSpec, dest: Path, *, build_args: Mapping[str, str], labels: Mapping[str, str], tag: str,
         force: bool = False, cache: Path | None = None, progress: Progress | None = None) -> BuildContext:
    """Write a self-contained build context for ``spec`` to ``dest`` (see the module docstring): assembled in
    a temporary sibling and renamed into place; a non-empty ``dest`` is replaced only with ``force``."""
    spec.validate()
    path = check_emit_destination(dest, force=force, code_dir=spec.code_dir)
    if not _ARG_VALUE.fullmatch(tag):
        raise ConfigError(f"{tag!r} is not an image reference (letters, digits and ._/:@-)", key="--tag")
    dockerfile = emitted_dockerfile(spec, build_args, labels, tag)  # bad values fail before anything is written
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        ctx = assemble(spec, tmp, cache=cache, progress=progress)
        (tmp / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        (tmp / "README.md").write_text(context_readme(spec, build_args, labels, tag), encoding="utf-8")
        (tmp / ".dockerignore").write_text(dockerignore_text(), encoding="utf-8")
        _replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("emitted the %s/%s build context to %s", spec.variant.name, spec.kind, path)
    return BuildContext(path=path, dockerfile="Dockerfile", wheels=[path / w.relative_to(tmp) for w in ctx.wheels],
                        smbyoc_wheel=path / ctx.smbyoc_wheel.relative_to(tmp) if ctx.smbyoc_wheel else None)
