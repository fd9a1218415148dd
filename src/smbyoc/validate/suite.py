"""``validate_image``: run an image through SageMaker's container contract, one result per check.

Order of work: the options are checked (one clear error, nothing started); the image is inspected and
the checks that only read it run (:mod:`smbyoc.validate.image`); the suite decides whether the image
trains and/or serves (``kind``: ``--kind``, else the ``org.smbyoc.kind`` label, else ``CMD ["train"]`` /
``CMD ["serve"]``, else ``train``/``serve`` on the image's PATH when it has no ENTRYPOINT); then the
training checks and the serving checks run, at the same time, each group in a worker thread with a
deadline (:mod:`smbyoc.validate.runner`; the checks: :mod:`smbyoc.validate.training`,
:mod:`smbyoc.validate.serving`). A check that does not apply
is ``n/a`` with the reason. Everything the checks start is removed at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smbyoc.emulator.runtime_client import INVOCATION_TIMEOUT
from smbyoc.errors import ConfigError
from smbyoc.validate import image as image_checks
from smbyoc.validate import serving, training
from smbyoc.validate.checks import ALL_CHECKS
from smbyoc.validate.context import Canceller, Progress, ValidateContext
from smbyoc.validate.image import SMBYOC_KIND_LABEL, ImageFacts
from smbyoc.validate.report import CheckResult, ValidationReport, failed, not_applicable, ordered, passed
from smbyoc.validate.runner import GROUP_SLACK, Group, cancel_all, wait_for

log = logging.getLogger(__name__)

KINDS = ("train", "serve", "both")


@dataclass(frozen=True)
class ValidateOptions:
    """Everything but the image, the kind, the payload and the instance type (see :func:`validate_image`)."""

    #: ``model.tar.gz`` or directory served at ``/opt/ml/model``.
    model_data: Path | None = None
    accept: str | None = None
    #: CreateTrainingJob ``HyperParameters`` (strings) and channels of the training jobs.
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[tuple[str, Path], ...] = ()
    source_dir: Path | None = None
    entry_point: str | None = None
    #: Environment of every container (CreateTrainingJob / ContainerDefinition ``Environment``).
    environment: Mapping[str, str] = field(default_factory=dict)
    fail_hyperparameters: Mapping[str, str] | None = None
    keep_running_hyperparameters: Mapping[str, str] | None = None
    startup_timeout: float = serving.STARTUP_HEALTH_TIMEOUT
    train_stop_timeout: float = training.TRAINING_STOP_TIMEOUT
    serve_stop_timeout: float = serving.ENDPOINT_STOP_TIMEOUT
    sigterm_after: float = 1.0
    #: Seconds one training job, or one invocation, may take before its check fails.
    timeout: float = 600.0
    max_image_bytes: int | None = None
    skip: tuple[str, ...] = ()

    def validate(self) -> ValidateOptions:
        for value, option in ((self.startup_timeout, "--startup-timeout"), (self.timeout, "--timeout"),
                              (self.sigterm_after, "--sigterm-after")):
            if not value > 0:
                raise ConfigError("must be a positive number of seconds", key=f"{option} {value:g}")
        for value, option in ((self.train_stop_timeout, "--train-stop-timeout"),
                              (self.serve_stop_timeout, "--serve-stop-timeout")):
            if not value >= 1:
                raise ConfigError("must be at least 1 second", key=f"{option} {value:g}")
        if self.max_image_bytes is not None and self.max_image_bytes <= 0:
            raise ConfigError("must be a positive size", key=f"--max-image-size {self.max_image_bytes}")
        for name in self.skip:
            if name not in ALL_CHECKS:
                raise ConfigError(f"no such check (checks: {', '.join(ALL_CHECKS)})", key=f"--skip {name}")
        if self.model_data is not None and not self.model_data.exists():
            raise ConfigError("no such file or directory", key=f"--model-data {self.model_data}")
        if self.source_dir is not None and not self.source_dir.exists():
            raise ConfigError("no such file or directory", key=f"--source-dir {self.source_dir}")
        for name, path in self.channels:
            if not path.exists():
                raise ConfigError("no such file or directory", key=f"--channel {name}={path}")
        return self

    @property
    def gives_training_inputs(self) -> bool:
        return bool(self.hyperparameters or self.channels or self.source_dir or self.entry_point)


# ----------------------------------------------------------------------------------------------- kind
def detect_kinds(client: Any, facts: ImageFacts, kind: str | None) -> tuple[frozenset[str], CheckResult]:
    """What the image does (``train``, ``serve``) and the ``kind`` check's result saying how that was decided."""
    name, group = "kind", "image"
    if kind is not None:
        kinds = frozenset(("train", "serve") if kind == "both" else (kind,))
        return kinds, passed(name, f"{_describe(kinds)} (--kind {kind})", group=group)
    label = str(facts.labels.get(SMBYOC_KIND_LABEL, ""))
    if label in ("train", "serve"):
        kinds = frozenset((label,))
        return kinds, passed(name, f"{_describe(kinds)} (label {SMBYOC_KIND_LABEL}={label})", group=group)
    if facts.cmd in (("train",), ("serve",)):
        assert facts.cmd is not None
        kinds = frozenset(facts.cmd)
        return kinds, passed(name, f"{_describe(kinds)} (CMD {list(facts.cmd)})", group=group)
    if not facts.entrypoint:
        found = probe_programs(client, facts.ref)
        if found:
            kinds = frozenset(found)
            where = ", ".join(f"{k} at {p}" for k, p in sorted(found.items()))
            return kinds, passed(name, f"{_describe(kinds)} ({where} on the image's PATH)", group=group)
    how = (f"ENTRYPOINT {list(facts.entrypoint)}" if facts.entrypoint
           else "no `train` or `serve` on the image's PATH")
    return frozenset(), failed(name, f"cannot tell whether the image trains or serves (no {SMBYOC_KIND_LABEL} label, "
                                     f"CMD {list(facts.cmd or ())}, {how}): give --kind train, serve or both",
                               group=group)


def _describe(kinds: frozenset[str]) -> str:
    if kinds == {"train", "serve"}:
        return "trains and serves"
    return "trains" if "train" in kinds else "serves"


PROBE_SCRIPT = "for p in train serve; do w=$(command -v $p) && echo \"$p=$w\"; done; true"


def probe_programs(client: Any, image: str, timeout: float = 60.0) -> dict[str, str]:
    """``{"train": path, "serve": path}`` for the programs on the image's PATH (a throwaway container runs
    ``/bin/sh -c 'command -v ...'``); empty when the image has no shell."""
    import docker.errors
    import requests.exceptions

    from smbyoc.emulator import containers

    container = None
    try:
        container = client.containers.create(image, entrypoint=["/bin/sh", "-c", PROBE_SCRIPT], command=[],
                                             network_disabled=True, labels=containers.labels("smbyoc-validate-probe"),
                                             detach=True)
        container.start()
        container.wait(timeout=timeout)
        output = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        log.debug("probe of %s: %s", image, e)
        return {}
    finally:
        containers.remove_quietly(container, "probe container")
    found = {}
    for line in output.splitlines():
        program, _, path = line.strip().partition("=")
        if program in ("train", "serve") and path:
            found[program] = path
    return found


# --------------------------------------------------------------------------------------------- inputs
def read_payload(payload: Path | None) -> bytes | None:
    from smbyoc.emulator.runtime_client import MAX_BODY_BYTES

    if payload is None:
        return None
    try:
        data = payload.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", key=f"--payload {payload}") from None
    except OSError as e:
        raise ConfigError(f"cannot be read: {e.strerror}", key=f"--payload {payload}") from e
    if len(data) > MAX_BODY_BYTES:
        raise ConfigError(f"has {len(data):,} bytes; InvokeEndpoint takes at most {MAX_BODY_BYTES:,} (6 MB)",
                          key=f"--payload {payload}")
    return data


def _is_smbyoc_image(facts: ImageFacts) -> bool:
    """One of smbyoc's runtime images with no code of its own baked in (it runs the bundled example)."""
    return SMBYOC_KIND_LABEL in facts.labels and facts.env_value("SAGEMAKER_PROGRAM") is None


def training_inputs(facts: ImageFacts, options: ValidateOptions) -> training.TrainingInputs:
    if options.gives_training_inputs or not _is_smbyoc_image(facts):
        inputs = training.TrainingInputs(
            hyperparameters=dict(options.hyperparameters), channels=options.channels, source_dir=options.source_dir,
            entry_point=options.entry_point)
    else:
        inputs = training.example_inputs()
    return replace(inputs, environment=dict(options.environment), fail_hyperparameters=options.fail_hyperparameters,
                   keep_running_hyperparameters=dict(options.keep_running_hyperparameters
                                                     if options.keep_running_hyperparameters is not None
                                                     else inputs.keep_running_hyperparameters))


def serving_inputs(client: Any, facts: ImageFacts, options: ValidateOptions, payload: bytes | None,
                   payload_name: str, content_type: str) -> serving.ServingInputs:
    if options.model_data is None and payload is None and _is_smbyoc_image(facts):
        from smbyoc.images.defaults import ensure_default_image

        inputs = serving.example_inputs(client, lambda: ensure_default_image(client, "train"))
    else:
        inputs = serving.ServingInputs(model_data=options.model_data, payload=payload, payload_name=payload_name,
                                       content_type=content_type)
    return replace(inputs, accept=options.accept, environment=dict(options.environment))


def container_instance_type(instance_type: str | None) -> str:
    """The instance type whose CPU and memory limits the containers get (``local``: none).

    A type of the other architecture than this machine's (a Graviton type on x86_64) gives ``local``: the
    ``platform`` check reports the mismatch, and the behaviour checks still run the image as this engine can
    (the emulator would otherwise refuse every run, failing checks that have nothing to do with the platform)."""
    import platform

    from smbyoc.emulator.image_platform import ARCHITECTURES, instance_platform
    from smbyoc.emulator.instance_types import lookup

    if instance_type is None:
        return "local"
    try:
        lookup(instance_type)
    except ConfigError:
        raise ConfigError("expected an ML instance type such as ml.m5.large (see `smbyoc local-train --help`)",
                          key=f"--instance-type {instance_type}") from None
    machine = ARCHITECTURES.get(platform.machine().lower(), platform.machine().lower())
    if instance_platform(instance_type) != f"linux/{machine}":
        return "local"
    return instance_type


# ---------------------------------------------------------------------------------------------- suite
def validate_image(
    image: str,
    *,
    kind: str | None = None,
    payload: Path | None = None,
    content_type: str = "text/csv",
    instance_type: str | None = None,
    progress: Progress | None = None,
    options: ValidateOptions | None = None,
    client: Any = None,
) -> ValidationReport:
    """Run ``image`` through the contract's checks; bad input raises one ConfigError before anything starts.

    ``kind``: ``train``, ``serve`` or ``both`` (default: decided from the image). ``payload``: a sample
    request body for ``/invocations`` (``content_type``). ``instance_type``: the instance family the image
    must fit (and the containers' limits). ``progress`` gets one line per step.
    """
    started = time.monotonic()
    options = (options or ValidateOptions()).validate()
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"expected one of {', '.join(KINDS)}", key=f"--kind {kind}")
    body = read_payload(payload)
    limits_type = container_instance_type(instance_type)
    if client is None:
        from smbyoc.docker.client import get_client

        client = get_client()
    facts = ImageFacts.from_engine(client, image)
    if instance_type is not None:
        image_checks.instance_arch(instance_type)  # refuses an unknown type before anything runs

    def say(message: str) -> None:
        if progress is not None:
            progress(message)
        else:
            log.info("%s", message)

    say(f"validate {image} ({facts.platform}, {facts.id[7:19] or 'no id'})")
    kinds, kind_result = detect_kinds(client, facts, kind)
    results: list[CheckResult] = [
        kind_result,
        image_checks.check_platform(facts, kinds, instance_type),
        image_checks.check_size(facts, kinds, options.max_image_bytes),
        image_checks.check_user(facts),
        image_checks.check_entrypoint(facts),
        image_checks.check_secrets(facts),
    ]
    skip = set(options.skip)
    work_root = Path(tempfile.mkdtemp(prefix="smbyoc-validate-"))
    groups: list[Group] = []
    try:
        blocked = image_checks.cannot_run_here(facts, image_checks.engine_arch(client))
        for group_name, checks, does in (("training", training.CHECKS, "train"), ("serving", serving.CHECKS, "serve")):
            if blocked is not None or does not in kinds:
                why = blocked or (f"the image does not {does} (kind check)" if kind_result.passed
                                  else "the kind check could not tell what the image does")
                results += [not_applicable(n, why, group=group_name) for n in checks]
                continue
            wanted = [n for n in checks if n not in skip]
            results += [not_applicable(n, "skipped (--skip)", group=group_name) for n in checks if n in skip]
            if not wanted:
                continue
            ctx = ValidateContext(client=client, facts=facts, work_dir=work_root / group_name,
                                  instance_type=limits_type, timeout=options.timeout, progress=say,
                                  canceller=Canceller())
            ctx.work_dir.mkdir()
            groups.append(_make_group(group_name, tuple(wanted), ctx, client, facts, options, body, payload,
                                      content_type, frozenset(skip)))
        for group in groups:
            group.start()
        try:
            wait_for(groups)
        except BaseException:
            cancel_all(groups)
            raise
        for group in groups:
            results += group.finish()
    finally:
        _remove_tree(work_root)
    report = ValidationReport(
        image=image, results=ordered(results, ALL_CHECKS), image_id=facts.id, kinds=tuple(sorted(kinds)),
        seconds=time.monotonic() - started,
        options={"kind": kind, "instance_type": instance_type, "payload": str(payload) if payload else None,
                 "content_type": content_type, "skip": sorted(skip)},
    )
    return report


def _make_group(name: str, checks: tuple[str, ...], ctx: ValidateContext, client: Any, facts: ImageFacts,
                options: ValidateOptions, body: bytes | None, payload: Path | None, content_type: str,
                skip: frozenset[str]) -> Group:
    if name == "training":
        inputs = training_inputs(facts, options)
        training.check_inputs(ctx, inputs)
        settings = training.TrainingSettings(stop_timeout=options.train_stop_timeout,
                                             sigterm_after=options.sigterm_after)
        budget = 3 * (options.timeout + options.train_stop_timeout) + GROUP_SLACK

        def run_training(c: ValidateContext, record: Callable[[CheckResult], None]) -> None:
            training.run_training_checks(c, inputs, settings, record, skip=skip)

        return Group(name, checks, run_training, budget, ctx)
    serve_inputs = serving_inputs(client, facts, options, body, payload.name if payload else "", content_type)
    serve_settings = serving.ServingSettings(startup_timeout=options.startup_timeout,
                                             stop_timeout=options.serve_stop_timeout)
    step = min(INVOCATION_TIMEOUT, options.timeout)
    budget = 2 * options.startup_timeout + 2 * step + 3 * options.serve_stop_timeout + GROUP_SLACK

    def run_serving(c: ValidateContext, record: Callable[[CheckResult], None]) -> None:
        serving.run_serving_checks(c, serve_inputs, serve_settings, record, skip=skip)

    return Group(name, checks, run_serving, budget, ctx)


def _remove_tree(root: Path) -> None:
    from smbyoc.emulator.layout import make_writable

    try:
        make_writable(root)
    except OSError as e:
        log.debug("make %s writable: %s", root, e)
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        log.warning("could not remove %s entirely (files owned by another user?)", root)


__all__ = ["ALL_CHECKS", "KINDS", "ValidateOptions", "detect_kinds", "validate_image"]
