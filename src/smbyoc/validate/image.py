"""Checks that read the image without running it: platform, size, user, entry point form, secrets.

:class:`ImageFacts` is what ``docker inspect`` and ``docker history`` say about the image; each check is
a pure function of it (and of the options), so it is tested on facts written by hand as well as on real
images.

Sources (docs/validate.md has the details):

* platform: Graviton (arm64) instance families exist only for hosting, none for training or processing
  (contract-endpoints.md §8.1); everything else is ``linux/amd64``.
* size: the only documented image size limit is serverless inference's 10 GB (DG
  ``serverless-endpoints.md``; SageMaker's error names 10737418240 bytes, aws/deep-learning-containers#4616;
  compared here with Docker's uncompressed ``Size``, never below the compressed size), and ECR refuses
  layers over 52,000 MiB (ECR service quotas).
  No limit is documented for training or real-time endpoints: ``max_image_bytes`` sets one.
* user: "SageMaker AI expects all containers to run with root users" (contract.md §3.1).
* entry point: exec form, so the program receives ``train``/``serve`` and SIGTERM (contract.md §1.1, §3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smbyoc.docker.client import translate_docker_errors
from smbyoc.emulator.image_platform import ARCHITECTURES
from smbyoc.emulator.instance_types import lookup
from smbyoc.validate import secret_scan
from smbyoc.validate.report import CheckResult, failed, not_applicable, passed

log = logging.getLogger(__name__)

GROUP = "image"

#: Graviton (arm64) instance families; hosting only (contract-endpoints.md §8.1, BOTO
#: ``ProductionVariantInstanceType``).
GRAVITON_FAMILIES = ("c6g", "c6gd", "c6gn", "c7g", "c8g", "m6g", "m6gd", "m8g", "r6g", "r6gd", "r7gd", "r8g")
#: Serverless inference: "The maximum size of the container image you can use is 10 GB" (DG
#: serverless-endpoints.md); SageMaker's error gives it in bytes: "greater than supported size 10737418240".
SERVERLESS_MAX_IMAGE_BYTES = 10 * 1024**3
#: ECR: "Maximum layer size: 52,000 MiB" (ECR service quotas).
ECR_MAX_LAYER_BYTES = 52_000 * 1024**2
ACCEPT_BIND_TO_PORT_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"
SMBYOC_KIND_LABEL = "org.smbyoc.kind"
_SHELLS = ("/bin/sh", "/bin/bash", "sh", "bash", "/bin/dash", "/usr/bin/env sh", "/bin/ash")


@dataclass(frozen=True)
class ImageFacts:
    """What the engine knows about an image, without running it."""

    ref: str
    id: str = ""
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    size: int = 0
    user: str = ""
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    #: ``(CreatedBy, size)`` of each layer, oldest first.
    history: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_engine(cls, client: Any, image: str) -> ImageFacts:
        """Inspect ``image`` in the engine; DockerError (one line) when it is not there."""
        from smbyoc.emulator.containers import require_image

        found = require_image(client, image)
        with translate_docker_errors(f"inspect image {image}"):
            attrs = found.attrs
            history = found.history()
        return cls.from_attrs(image, attrs, history)

    @classmethod
    def from_attrs(cls, ref: str, attrs: Mapping[str, Any], history: list[Mapping[str, Any]]) -> ImageFacts:
        """From ``docker inspect`` (``attrs``) and ``docker history`` (newest first, as the engine answers)."""
        config = attrs.get("Config") or {}
        entrypoint = config.get("Entrypoint")
        cmd = config.get("Cmd")
        return cls(
            ref=ref, id=str(attrs.get("Id", "")), os=str(attrs.get("Os") or "linux"),
            architecture=str(attrs.get("Architecture") or ""), variant=str(attrs.get("Variant") or ""),
            size=int(attrs.get("Size") or 0), user=str(config.get("User") or ""),
            entrypoint=tuple(entrypoint) if entrypoint else None, cmd=tuple(cmd) if cmd else None,
            env=tuple(config.get("Env") or ()), labels=dict(config.get("Labels") or {}),
            history=tuple((str(h.get("CreatedBy") or ""), int(h.get("Size") or 0)) for h in reversed(history)),
        )

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def env_value(self, name: str) -> str | None:
        for item in self.env:
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None

    @property
    def claims_bind_to_port(self) -> bool:
        return str(self.labels.get(ACCEPT_BIND_TO_PORT_LABEL, "")).lower() == "true"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def instance_arch(instance_type: str) -> str:
    """``amd64`` or ``arm64`` for an ML instance type (Graviton families are arm64)."""
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    if family in GRAVITON_FAMILIES:
        return "arm64"
    return "arm64" if lookup(instance_type).arch == "arm64" else "amd64"


# ------------------------------------------------------------------------------------------------- checks
def check_platform(facts: ImageFacts, kinds: frozenset[str], instance_type: str | None) -> CheckResult:
    name = "platform"
    if facts.os != "linux":
        return failed(name, f"{facts.platform}: SageMaker runs linux images only", group=GROUP)
    if facts.architecture not in ("amd64", "arm64"):
        return failed(name, f"{facts.platform}: SageMaker instances are linux/amd64, or linux/arm64 for the "
                            f"Graviton hosting families", group=GROUP)
    graviton = ", ".join(f"ml.{f}" for f in GRAVITON_FAMILIES)
    if instance_type is not None and instance_type not in ("local", "local_gpu"):
        wanted = instance_arch(instance_type)
        if wanted == "arm64" and "train" in kinds:
            return failed(name, f"{instance_type} is a Graviton (arm64) instance, and SageMaker has none for "
                                "training: train on an x86 (linux/amd64) instance type", group=GROUP)
        if facts.architecture != wanted:
            fix = ("build it for linux/arm64 (smbyoc build --variant arm64) or push a manifest list with both"
                   if wanted == "arm64" else "build it for linux/amd64")
            family = "a Graviton (linux/arm64)" if wanted == "arm64" else "an x86 (linux/amd64)"
            return failed(name, f"the image is {facts.platform} but {instance_type} is {family} instance: {fix}",
                          group=GROUP)
        return passed(name, f"{facts.platform} matches {instance_type}", group=GROUP)
    if facts.architecture == "arm64":
        if "train" in kinds:
            return failed(name, f"{facts.platform} cannot train: SageMaker's training instances are all "
                                "linux/amd64 (Graviton is for hosting only)", group=GROUP)
        return passed(name, f"{facts.platform}: for the Graviton hosting families only ({graviton})", group=GROUP)
    return passed(name, f"{facts.platform}: runs on every x86 instance family (training, processing, hosting; "
                        "not Graviton)", group=GROUP)


def check_size(facts: ImageFacts, kinds: frozenset[str], max_image_bytes: int | None) -> CheckResult:
    name = "image-size"
    size = facts.size
    layers = [(created_by, bytes_) for created_by, bytes_ in facts.history]
    biggest = max((b for _, b in layers), default=0)
    summary = f"{_fmt_bytes(size)} uncompressed, {len(layers)} layers, largest {_fmt_bytes(biggest)}"
    if biggest > ECR_MAX_LAYER_BYTES:
        number = next(i for i, (_, b) in enumerate(layers, start=1) if b == biggest)
        return failed(name, f"{summary}: layer {number} has {_fmt_bytes(biggest)} uncompressed; ECR refuses layers "
                            "over 52,000 MiB (compressed): split it or keep the data out of the image", group=GROUP)
    if max_image_bytes is not None and size > max_image_bytes:
        return failed(name, f"{summary}: over the limit of {_fmt_bytes(max_image_bytes)} (--max-image-size)",
                      group=GROUP)
    notes = []
    if max_image_bytes is not None:
        notes.append(f"within --max-image-size {_fmt_bytes(max_image_bytes)}")
    if "serve" in kinds:
        notes.append("too large for serverless endpoints (10 GiB)" if size > SERVERLESS_MAX_IMAGE_BYTES
                     else "fits serverless endpoints (10 GiB)")
    notes.append("no size limit is documented for training or real-time endpoints")
    return passed(name, f"{summary}; " + "; ".join(notes), group=GROUP)


def is_root(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in ("", "root", "0")


def check_user(facts: ImageFacts) -> CheckResult:
    name = "user"
    if is_root(facts.user):
        who = f"USER {facts.user}" if facts.user else "no USER"
        return passed(name, f"runs as root ({who})", group=GROUP)
    return failed(name, f"runs as USER {facts.user}: SageMaker expects containers to run as root (its /opt/ml "
                        "mounts are root's); drop USER or switch back with USER root", group=GROUP)


def is_shell_form(entrypoint: tuple[str, ...] | None) -> bool:
    """``ENTRYPOINT command`` (shell form) is stored as ``["/bin/sh", "-c", "command"]``."""
    return bool(entrypoint) and len(entrypoint or ()) >= 2 and (entrypoint or ())[0] in _SHELLS \
        and (entrypoint or ())[1] == "-c"


def check_entrypoint(facts: ImageFacts) -> CheckResult:
    name = "entrypoint"
    if is_shell_form(facts.entrypoint):
        assert facts.entrypoint is not None
        command = " ".join(facts.entrypoint[2:])
        return failed(name, f"shell form ENTRYPOINT {command!r}: /bin/sh gets SageMaker's `train`/`serve` "
                            "argument and drops it, and a program it starts does not receive SIGTERM unless "
                            'it is exec\'d; use the exec form ENTRYPOINT ["program", "arg"]', group=GROUP)
    if facts.entrypoint:
        return passed(name, f"exec form ENTRYPOINT {list(facts.entrypoint)}", group=GROUP)
    return passed(name, "no ENTRYPOINT: SageMaker's argument runs as the command (`train` or `serve` on PATH)",
                  group=GROUP)


def check_secrets(facts: ImageFacts) -> CheckResult:
    name = "secrets"
    findings = secret_scan.dedupe([
        *secret_scan.scan_environment(facts.env),
        *secret_scan.scan_labels(dict(facts.labels)),
        *secret_scan.scan_history(created_by for created_by, _ in facts.history),
    ])
    scanned = f"{len(facts.env)} environment variables, {len(facts.labels)} labels, {len(facts.history)} layer commands"
    if findings:
        shown = "; ".join(f.describe() for f in findings[:5])
        more = f" (and {len(findings) - 5} more)" if len(findings) > 5 else ""
        return failed(name, f"{len(findings)} possible secret(s) readable by anyone who pulls the image: "
                            f"{shown}{more}; pass secrets at run time (Environment, a secrets manager), never in "
                            "ENV, LABEL, ARG or a RUN line", group=GROUP)
    return passed(name, f"none found in {scanned}", group=GROUP)


def engine_arch(client: Any) -> str:
    with translate_docker_errors("ask the Docker Engine for its architecture"):
        arch = str(client.info().get("Architecture") or "")
    return ARCHITECTURES.get(arch, arch)


def cannot_run_here(facts: ImageFacts, engine: str) -> str | None:
    """Why the image cannot be run on this engine (another architecture), or None."""
    if facts.architecture and facts.architecture != engine:
        return f"a {facts.platform} image does not run on this linux/{engine} Docker Engine (no emulation)"
    return None


def not_run(names: tuple[str, ...], reason: str, group: str) -> list[CheckResult]:
    return [not_applicable(n, reason, group=group) for n in names]
