"""Build smbyoc images through the Docker Engine API, with streamed progress.

Public API::

    build_image(kind, variant="cpu", tag=None, *, code_dir=None, base_image=None, requirements=None,
                client=None, cache=None, progress=None, nocache=False, labels=None) -> BuildResult
    ensure_image(kind, variant="cpu", tag=None, *, client=None, base_image=None, progress=None) -> str
    emit_context(kind, dest, variant="cpu", tag=None, *, code_dir=None, base_image=None, requirements=None,
                 labels=None, force=False, client=None, cache=None, progress=None) -> EmitResult
    default_tag(kind, variant="cpu") -> "smbyoc/<kind>:<variant>"

Checks run before anything slow, each failing with one line: the variant builds that kind; the
variant's package repositories answer (Neuron); the base image is here or can be pulled; a foreign
architecture (arm64 on x86_64) has a qemu binfmt_misc handler.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import smbyoc
from smbyoc.docker.client import get_client, translate_docker_errors
from smbyoc.errors import BuildError, DockerError
from smbyoc.images import context as build_context
from smbyoc.images import repositories
from smbyoc.images.variants import Variant, load_variant
from smbyoc.images.wheelhouse import source_fingerprint

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_ENGINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
#: The engine's note after each step of a build for another architecture (Docker 20.10, classic builder).
_FOREIGN_PLATFORM_NOISE = "does not match the detected host platform"


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    size_bytes: int
    seconds: float
    variant: str
    kind: str
    base_image: str

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


#: Image label holding :func:`smbyoc.images.wheelhouse.source_fingerprint` of the smbyoc inside.
SOURCE_LABEL = "org.smbyoc.source"
#: The variant the image is (``cpu`` for an ``ei`` build: see :data:`REQUESTED_VARIANT_LABEL`).
VARIANT_LABEL = "org.smbyoc.variant"
KIND_LABEL = "org.smbyoc.kind"
VERSION_LABEL = "org.smbyoc.version"
#: ``os/arch`` the image was built for (the engine's ``Os``/``Architecture`` say what it is).
PLATFORM_LABEL = "org.smbyoc.platform"
#: Set only when a migration-path variant (``ei``) was asked for: what was asked, and why it is another image.
REQUESTED_VARIANT_LABEL = "org.smbyoc.requested-variant"
MIGRATION_LABEL = "org.smbyoc.migration"
#: SageMaker accepts an image for a multi-model endpoint only with this label set to ``true`` (contract.md §5).
MULTI_MODELS_LABEL = "com.amazonaws.sagemaker.capabilities.multi-models"


def default_tag(kind: str, variant: str = "cpu") -> str:
    """The tag smbyoc gives an image it builds by default, e.g. ``smbyoc/serve:cpu``."""
    return f"smbyoc/{kind}:{variant}"


def _say(progress: Progress | None, line: str, level: int = logging.INFO) -> None:
    """``line`` to the progress callback when there is one (the CLI prints it), else to the log: never both."""
    if progress:
        progress(line)
    else:
        logger.log(level, "%s", line)


def _local_image(client: Any, name: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _pull_error(client: Any, name: str) -> str | None:
    """None when the registry knows ``name``, else the engine's reason."""
    import docker.errors

    try:
        client.api.inspect_distribution(name)
    except docker.errors.APIError as e:
        reason = str(e.explanation or e)
        match = re.search(r"(dial tcp[^\"]*|no such host|unauthorized[^\"]*|manifest unknown[^\"]*)", reason)
        return match.group(1) if match else reason
    return None


def resolve_base_image(variant: Variant, kind: str, client: Any, explicit: str | None = None,
                       progress: Progress | None = None) -> str:
    """The base image to build on, checked to exist (locally or in a registry) and to fit the platform.

    Order: ``explicit`` (``--base-image``); the variant's public default when present locally; the
    variant's local base (``scripts/build-base-image``) when present; the public default when a registry
    has it. Otherwise BuildError naming what is missing.
    """
    default = variant.base_image(kind)
    candidates: list[str] = []
    if explicit:
        image = _local_image(client, explicit)
        if image is None:
            reason = _pull_error(client, explicit)
            if reason is not None:
                raise BuildError(f"--base-image {explicit} is not present locally and cannot be pulled ({reason})")
            return explicit
        _check_arch(variant, explicit, image)
        return explicit
    image = _local_image(client, default)
    if image is not None:
        _check_arch(variant, default, image)
        return default
    candidates.append(default)
    if variant.local_base_image:
        image = _local_image(client, variant.local_base_image)
        if image is not None:
            _check_arch(variant, variant.local_base_image, image)
            _say(progress, f"base image: {variant.local_base_image} (local; the public default {default} "
                           "is not present locally)")
            return variant.local_base_image
    reason = _pull_error(client, default)
    if reason is None:
        return default
    hint = (f"run scripts/build-base-image{' --arch arm64' if variant.arch == 'aarch64' else ''} "
            f"(makes {variant.local_base_image}) or pass --base-image" if variant.local_base_image
            else f"docker load (or pull) {default}, or pass --base-image with a local {variant.platform} image "
                 "like it (python3 with venv; nginx for serve)")
    raise BuildError(f"{variant.name}: base image {default} is not present locally and cannot be pulled "
                     f"({reason}); {hint}")


def _check_arch(variant: Variant, name: str, image: Any) -> None:
    arch = image.attrs.get("Architecture")
    want = _DOCKER_ARCH[variant.arch]
    if arch and arch != want:
        raise BuildError(f"{variant.name}: base image {name} is {arch}, the variant needs {want}")


def check_platform(variant: Variant, client: Any) -> None:
    """An image for another architecture needs the engine's kernel to run its binaries (qemu binfmt)."""
    engine_arch = _ENGINE_ARCH.get(str(client.info().get("Architecture")), "")
    if engine_arch == variant.arch:
        return
    handler = BINFMT_DIR / f"qemu-{variant.arch}"
    try:
        enabled = handler.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        raise BuildError(f"{variant.name}: building {variant.platform} images on this {engine_arch} engine "
                         f"needs qemu user emulation, and {handler} is missing or disabled; "
                         "install qemu-user-static and register its handler (scripts/setup-qemu does both)")


def _check_repositories(variant: Variant) -> None:
    hint = ("; the build fetches the variant's packages from it on this machine (into the build context): make it "
            "reachable here, e.g. through a proxy in HTTPS_PROXY")
    try:
        for url in variant.pip_extra_index_urls:
            repositories.check_reachable(url, f"{variant.name}: the package repository")
        if variant.apt_repository is not None:
            repositories.check_reachable(variant.apt_repository.url, f"{variant.name}: the apt repository")
    except BuildError as e:
        raise BuildError(f"{e}{hint}") from e


def preflight(variant: Variant, kind: str, client: Any, base_image: str | None = None,
              progress: Progress | None = None) -> str:
    """Every early check; returns the base image to use."""
    variant.check_kind(kind)
    _check_repositories(variant)
    problems: list[str] = []
    base = ""
    with translate_docker_errors(f"checking the base image of {variant.name}/{kind}"):
        try:
            base = resolve_base_image(variant, kind, client, base_image, progress)
        except BuildError as e:
            problems.append(str(e))
        try:
            check_platform(variant, client)
        except BuildError as e:  # said together with a missing base image: one line names all that is missing
            problems.append(str(e).removeprefix(f"{variant.name}: ") if problems else str(e))
    if problems:
        raise BuildError("; and ".join(problems))
    return base


def image_labels(variant: Variant, kind: str, base: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels smbyoc puts on an image it builds, plus ``extra`` (e.g. :data:`MULTI_MODELS_LABEL`)."""
    labels = {VARIANT_LABEL: variant.image_variant, KIND_LABEL: kind, VERSION_LABEL: smbyoc.__version__,
              PLATFORM_LABEL: variant.platform, "org.smbyoc.base-image": base, SOURCE_LABEL: source_fingerprint()}
    if variant.builds_as:
        labels[REQUESTED_VARIANT_LABEL] = variant.name
        labels[MIGRATION_LABEL] = migration_line(variant)
    return {**labels, **(extra or {})}


def migration_line(variant: Variant) -> str:
    """The one line saying what a migration-path variant builds instead, and why (``ei`` → ``cpu``)."""
    return f"{variant.name} -> {variant.builds_as}: {variant.migration}" if variant.builds_as else ""


def announce(variant: Variant, progress: Progress | None) -> None:
    """Warn that a variant is discontinued, and say in one line what is built instead."""
    if variant.discontinued:
        _say(progress, f"WARNING: {variant.discontinued}" if progress else f"{variant.name}: {variant.discontinued}",
             logging.WARNING)
    if variant.builds_as:
        _say(progress, migration_line(variant), logging.WARNING)


def build_args(variant: Variant, kind: str, base: str) -> dict[str, str]:
    """The build arguments of the ``kind`` image of ``variant`` on ``base`` (passed through the Engine API by
    :func:`build_image`, baked in as the ARG defaults by :func:`emit_context`)."""
    args = {"BASE_IMAGE": base}
    if variant.dockerfile(kind).name == "Dockerfile.neuron":
        args["KIND"] = kind
    return args


def build_image(kind: str, variant: str | Variant = "cpu", tag: str | None = None, *,
                code_dir: Path | None = None, base_image: str | None = None,
                requirements: Path | None = None, client: Any | None = None, cache: Path | None = None,
                progress: Progress | None = None, nocache: bool = False,
                labels: Mapping[str, str] | None = None) -> BuildResult:
    """Build the ``kind`` image of ``variant`` and tag it (default :func:`default_tag`); ``labels`` are added to
    smbyoc's own (:func:`image_labels`)."""
    started = time.monotonic()
    var = variant if isinstance(variant, Variant) else load_variant(variant)
    tag = tag or default_tag(kind, var.name)
    spec = build_context.ContextSpec(var, kind, code_dir=code_dir, requirements=requirements)
    spec.validate()
    announce(var, progress)
    client = client or get_client()
    base = preflight(var, kind, client, base_image, progress)
    _say(progress, f"building {tag} ({var.name}/{kind}, {var.platform}) on {base}")
    buildargs = build_args(var, kind, base)
    all_labels = image_labels(var, kind, base, labels)
    with tempfile.TemporaryDirectory(prefix="smbyoc-build.") as tmp:
        ctx = build_context.assemble(spec, Path(tmp) / "context", cache=cache, progress=progress)
        image_id = _stream_build(client, ctx.path, tag, buildargs, all_labels, var, nocache, progress)
    with translate_docker_errors(f"inspecting {tag}"):
        image = client.images.get(tag)
    result = BuildResult(tag=tag, image_id=image.id or image_id, size_bytes=int(image.attrs.get("Size", 0)),
                         seconds=time.monotonic() - started, variant=var.name, kind=kind, base_image=base)
    _say(progress, f"built {tag}: {result.image_id} ({result.size_mb:.0f} MB) in {result.seconds:.1f}s")
    return result


def _stream_build(client: Any, path: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str],
                  variant: Variant, nocache: bool, progress: Progress | None) -> str:
    image_id = ""
    tail: list[str] = []
    kwargs: dict[str, Any] = {}
    engine_arch = _ENGINE_ARCH.get(str(client.info().get("Architecture")))
    if engine_arch != variant.arch:
        kwargs["platform"] = variant.platform
        _say(progress, f"{variant.platform} on this {engine_arch} engine: the RUN steps run under qemu user emulation "
                       "(several times slower than native)")
    with translate_docker_errors(f"building {tag}"):
        stream = client.api.build(path=str(path), dockerfile="Dockerfile", tag=tag, rm=True, forcerm=True,
                                  decode=True, buildargs=buildargs, labels=labels, nocache=nocache,
                                  pull=False, **kwargs)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error", "")
                smbyoc_lines = [t for t in tail if t.startswith("smbyoc: error:")]
                detail = smbyoc_lines[-1].removeprefix("smbyoc: error: ") if smbyoc_lines else str(message).strip()
                raise BuildError(f"building {tag} failed: {detail}")
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            for raw in str(chunk.get("stream", "")).splitlines():
                line = raw.rstrip()
                if _FOREIGN_PLATFORM_NOISE in line:  # said once above, not after every step
                    continue
                if line:
                    tail = [*tail[-30:], line]
                    if progress:
                        progress(line)
    return image_id


@dataclass(frozen=True)
class EmitResult:
    path: Path
    tag: str
    variant: str
    kind: str
    platform: str
    base_image: str
    seconds: float

    def build_command(self) -> str:
        """The plain ``docker build`` command for the emitted context."""
        return build_context.build_command(self.platform, self.tag, str(self.path))


def _emit_base(variant: Variant, kind: str, client: Any | None, explicit: str | None,
               progress: Progress | None) -> str:
    """The base image an emitted context builds on: chosen as :func:`build_image` chooses it when a Docker
    Engine answers; with none, ``explicit`` or the variant's public default (the context may be built
    elsewhere). The platform check (qemu) is the building machine's business, not this one's."""
    if client is None:
        try:
            client = get_client()
        except DockerError as e:
            base = explicit or variant.base_image(kind)
            _say(progress, f"base image: {base} (not checked: {e})")
            return base
    with translate_docker_errors(f"checking the base image of {variant.name}/{kind}"):
        return resolve_base_image(variant, kind, client, explicit, progress)


def emit_context(kind: str, dest: Path, variant: str | Variant = "cpu", tag: str | None = None, *,
                 code_dir: Path | None = None, base_image: str | None = None, requirements: Path | None = None,
                 labels: Mapping[str, str] | None = None, force: bool = False, client: Any | None = None,
                 cache: Path | None = None, progress: Progress | None = None) -> EmitResult:
    """Write to ``dest`` the build context of the image :func:`build_image` builds for the same arguments, for a
    plain ``docker build`` (or ``docker buildx build --provenance=false``): the build args become the ARG
    defaults, the labels a LABEL instruction (:func:`smbyoc.images.context.emit`). ``tag`` only goes into the
    context's README. A non-empty ``dest`` is refused unless ``force``."""
    started = time.monotonic()
    var = variant if isinstance(variant, Variant) else load_variant(variant)
    tag = tag or default_tag(kind, var.name)
    spec = build_context.ContextSpec(var, kind, code_dir=code_dir, requirements=requirements)
    spec.validate()
    build_context.check_emit_destination(dest, force=force, code_dir=code_dir)
    announce(var, progress)
    _check_repositories(var)
    base = _emit_base(var, kind, client, base_image, progress)
    _say(progress, f"emitting the {var.name}/{kind} build context ({var.platform}, on {base}) to {dest}")
    ctx = build_context.emit(spec, dest, build_args=build_args(var, kind, base),
                             labels=image_labels(var, kind, base, labels), tag=tag, force=force, cache=cache,
                             progress=progress)
    result = EmitResult(path=ctx.path, tag=tag, variant=var.name, kind=kind, platform=var.platform,
                        base_image=base, seconds=time.monotonic() - started)
    _say(progress, f"emitted {ctx.path} in {result.seconds:.1f}s; build it with: {result.build_command()}")
    return result


def ensure_image(kind: str, variant: str = "cpu", tag: str | None = None, *, client: Any | None = None,
                 base_image: str | None = None, progress: Progress | None = None) -> str:
    """The tag of the default ``kind`` image of ``variant``, building it first when it is absent or was
    built from another smbyoc (so the emulator never runs a stale runtime; an unchanged rebuild is cached)."""
    tag = tag or default_tag(kind, variant)
    client = client or get_client()
    with translate_docker_errors(f"looking up {tag}"):
        image = _local_image(client, tag)
    if image is not None:
        built_from = (image.labels or {}).get(SOURCE_LABEL)
        if built_from == source_fingerprint():
            return tag
        _say(progress, f"{tag} was built from another smbyoc ({built_from or 'unknown'}); rebuilding")
    build_image(kind, variant, tag, client=client, base_image=base_image, progress=progress)
    return tag
