"""``smbyoc push`` as one library call: :func:`push` takes a :class:`PushRequest` and returns a :class:`PushResult`.

In order, so that bad input costs nothing and leaves nothing behind:

1. offline: ``--repository`` parsed (ECR naming rules with ``--ecr``), options checked, the lifecycle policy
   checked (the CLI does that while reading the options);
2. with ``--ecr``: the ECR client (the credential chain checked, no network yet);
3. the local image found; an OCI-stored image refused; platform notes; with ``--ecr``, GetAuthorizationToken;
4. the validate gate (``smbyoc validate``'s checks) unless ``skip_validate``;
5. with ``--ecr``: the repository created when missing (or the explicit settings applied);
6. tag and push through the Docker Engine, progress per layer;
7. the manifest read back from the registry: its digest, and a media type SageMaker takes.

A failure after step 5 removes what this push created: the ECR repository (when it created it) and the local
tag (when it added it).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError, DockerError
from smbyoc.push import manifest as manifest_api
from smbyoc.push import registry
from smbyoc.push.credentials import RegistryCredentials, docker_config_credentials
from smbyoc.push.ecr import Ecr, RepositorySettings
from smbyoc.push.repository import TAG_RE, EcrRegistry, Repository, parse_repository

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

ECR_PUSH_PERMISSIONS = ("ecr:BatchCheckLayerAvailability, ecr:InitiateLayerUpload, ecr:UploadLayerPart, "
                        "ecr:CompleteLayerUpload, ecr:PutImage")


@dataclass(frozen=True)
class PushRequest:
    image: str
    repository: str
    ecr: bool = False
    region: str | None = None
    endpoint_url: str | None = None
    #: Where the layers go instead of the registry ECR names (a mirror, a registry on loopback in tests).
    registry_url: str | None = None
    settings: RepositorySettings = field(default_factory=RepositorySettings)
    credentials: RegistryCredentials | None = None
    skip_validate: bool = False
    #: A ``smbyoc validate --json`` report of this image: gate on it instead of validating again.
    validate_report: Path | None = None


@dataclass(frozen=True)
class PushResult:
    image: str
    reference: str  # where the engine pushed: registry/name:tag
    digest: str
    digest_uri: str  # what SageMaker should be given: registry/name@sha256:...
    media_type: str | None
    repository_created: bool
    layers_pushed: int
    layers_present: int


def default_tag(image: str) -> str:
    """The tag of ``image`` (``name:tag``, ``name:tag@sha256:...``), else ``latest`` (an image id, an untagged name,
    ``name@sha256:...``)."""
    if image.startswith("sha256:"):
        return "latest"
    tail = image.partition("@")[0].rsplit("/", 1)[-1]
    if ":" in tail:
        tag = tail.rsplit(":", 1)[1]
        if TAG_RE.fullmatch(tag):
            return tag
    return "latest"


def _url(text: str, option: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{text!r} is not a URL of the form http(s)://host[:port]", key=option)
    return parts


def check_request(request: PushRequest) -> Repository:
    """Every offline check of a request; the parsed repository."""
    if not request.image.strip():
        raise ConfigError("empty image name", key="IMAGE")
    repository = parse_repository(request.repository, ecr=request.ecr, default_tag=default_tag(request.image))
    if not request.ecr:
        settings = request.settings
        for value, option in ((request.region, "--region"), (request.endpoint_url, "--endpoint-url"),
                              (request.registry_url, "--registry-url"),
                              (settings.scan_on_push, "--scan-on-push/--no-scan-on-push"),
                              (settings.immutable_tags, "--immutable-tags/--mutable-tags"),
                              (settings.lifecycle_policy, "--lifecycle-policy/--keep-last")):
            if value is not None:
                raise ConfigError("only with --ecr (it sets up an ECR repository)", key=option)
        return repository
    if request.credentials is not None:
        raise ConfigError("ECR's credentials come from GetAuthorizationToken; drop --username/--password-stdin "
                          "with --ecr", key="--username")
    if request.endpoint_url:
        _url(request.endpoint_url, "--endpoint-url")
    if request.registry_url:
        _url(request.registry_url, "--registry-url")
    ecr = repository.ecr
    if ecr and request.region and request.region != ecr.region:
        raise ConfigError(f"{request.region!r} differs from the region of {repository.registry} ({ecr.region})",
                          key="--region")
    return repository


def _auth_hint(request: PushRequest, registry_host: str) -> str:
    if request.ecr:
        return f"ECR GetAuthorizationToken's token; the AWS identity needs {ECR_PUSH_PERMISSIONS}"
    if request.credentials is not None:
        return f"check --username/--password-stdin for {registry_host}"
    return f"pass --username/--password-stdin or run `docker login {registry_host}`"


def push(request: PushRequest, *, progress: Progress | None = None, engine: Any = None) -> PushResult:
    """Push ``request.image`` to ``request.repository``; see the module's docstring for the steps."""
    from smbyoc.docker.client import get_client

    say: Progress = progress or (lambda line: logger.info("%s", line))
    repository = check_request(request)
    ecr: Ecr | None = None
    if request.ecr:  # the credential chain is checked here, before anything else is touched
        ecr = Ecr(region=request.region or (repository.ecr.region if repository.ecr else None),
                  endpoint_url=request.endpoint_url)
    engine = engine if engine is not None else get_client()
    image = registry.local_image(engine, request.image)
    for note in registry.precheck(image.attrs, request.image):
        say(note)

    credentials = request.credentials
    registry_id: str | None = None
    if ecr is not None:
        registry_id = repository.ecr.account if repository.ecr else None
        authorization = ecr.authorization(registry_id)
        credentials = authorization.credentials
        if repository.registry is None:
            token_registry = EcrRegistry.from_host(authorization.host)
            repository = repository.with_registry(token_registry.host if token_registry else authorization.host)
    published = repository
    target = repository
    if request.registry_url:
        target = repository.with_registry(_url(request.registry_url, "--registry-url").netloc)
        say(f"layers go to {request.registry_url} (--registry-url), published as {published.reference}")

    if request.validate_report is not None:
        from smbyoc.push.gate import require_valid_report

        require_valid_report(request.image, str(image.id), request.validate_report)
        say(f"{request.image} passed smbyoc validate ({request.validate_report})")
    elif not request.skip_validate:
        from smbyoc.push.gate import require_valid

        say(f"validating {request.image} before the push (--skip-validate skips this)")
        require_valid(request.image, progress=say)

    created_repository = False
    created_tag = False
    try:
        if ecr is not None:
            created_repository = ecr.ensure_repository(repository.name, registry_id, request.settings, say)
        created_tag = registry.tag_image(engine, image, target)
        say(f"pushing {request.image} to {target.reference}")
        pushed = registry.push(engine, target, credentials, progress=say,
                               auth_hint=_auth_hint(request, target.registry or ""))
        found = _read_back(request, engine, target, credentials, pushed, say)
        digest = found.digest if found else pushed.digest
        if digest is None:
            raise DockerError(f"push {target.reference}: neither the engine nor the registry reported a digest")
        if found is not None:
            problem = manifest_api.sagemaker_problem(found.media_type)
            if problem:
                raise DockerError(f"pushed {target.reference} but {problem}")
    except BaseException:
        if created_tag:
            registry.untag(engine, target.reference)
        if created_repository and ecr is not None:
            ecr.delete_repository(repository.name, registry_id)
            say(f"removed the ECR repository {repository.name} created for this push")
        raise
    return PushResult(image=request.image, reference=target.reference, digest=digest,
                      digest_uri=published.digest_uri(digest), media_type=found.media_type if found else None,
                      repository_created=created_repository, layers_pushed=pushed.layers_pushed,
                      layers_present=pushed.layers_present)


def _read_back(request: PushRequest, engine: Any, target: Repository, credentials: RegistryCredentials | None,
               pushed: registry.PushedImage, say: Progress) -> manifest_api.Manifest | None:
    """The manifest as the registry stores it, or None (a warning) when it cannot be read but the engine
    reported a digest."""
    if request.registry_url:
        bases, verify = [request.registry_url.rstrip("/")], True
    else:
        with_config: dict[str, Any] = {}
        try:
            with_config = engine.info().get("RegistryConfig") or {}
        except Exception as e:  # the push worked; only the http/https choice depends on this
            logger.debug("docker info failed: %s", e)
        insecure = manifest_api.is_insecure(target.api_host, with_config)
        bases, verify = manifest_api.api_base_urls(target.api_host, insecure=insecure), not insecure
    read_with = credentials or docker_config_credentials(target.registry or "")
    try:
        found = manifest_api.read_manifest(bases, target.name, target.tag, read_with, verify=verify)
    except DockerError as e:
        if pushed.digest is None:
            raise
        say(f"warning: could not read the manifest back from the registry ({e}); the digest is the engine's and "
            "the media type is unchecked")
        return None
    if pushed.digest and found.digest != pushed.digest:
        raise DockerError(f"push {target.reference}: the engine pushed {pushed.digest} but the registry's "
                          f"{target.tag} is {found.digest} (another push to the same tag?)")
    return found
