"""Where an image is pushed: ``--repository REGISTRY/NAME[:TAG]`` parsed and checked offline.

The grammar is Docker's (distribution ``reference``): a registry host (it has a ``.`` or a ``:port``, or is
``localhost``), a lowercase path of components joined by ``/``, a tag of at most 128 characters. An ECR
registry is ``<account>.dkr.ecr.<region>.amazonaws.com``; an ECR repository name follows BOTO-ECR's
``RepositoryName`` rule (2-256 characters, the regex below; contract-endpoints.md §8.1). ECR allows tags of up
to 300 characters but the Docker Engine refuses more than 128, so the engine's limit is the one checked.

Every check raises :class:`~smbyoc.errors.ConfigError` with one line naming ``--repository`` and the culprit,
before any network call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from smbyoc.errors import ConfigError

OPTION = "--repository"
DOCKER_HUB = "docker.io"
#: The host Docker Hub's registry API answers on (``docker.io`` is only the name in references).
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
#: A repository path (Docker's and, with 2-256 characters, ECR's RepositoryName pattern).
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
DOMAIN_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
ECR_HOST_RE = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(?P<fips>-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)"
    r"\.amazonaws\.com(?P<china>\.cn)?"
)
#: Docker's limit on a whole name, registry included (distribution ``NameTotalLengthMax``).
NAME_TOTAL_MAX = 255
ECR_NAME_MIN, ECR_NAME_MAX = 2, 256


@dataclass(frozen=True)
class EcrRegistry:
    """An ECR registry: ``<account>.dkr.ecr.<region>.amazonaws.com``."""

    account: str
    region: str
    host: str

    @classmethod
    def from_host(cls, host: str) -> EcrRegistry | None:
        match = ECR_HOST_RE.fullmatch(host.lower())
        if match is None:
            return None
        return cls(account=match["account"], region=match["region"], host=host.lower())

    @classmethod
    def for_account(cls, account: str, region: str) -> EcrRegistry:
        suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
        return cls(account=account, region=region, host=f"{account}.dkr.ecr.{region}{suffix}")


@dataclass(frozen=True)
class Repository:
    """A parsed ``--repository``: ``registry`` is None only for a bare name pushed with ``--ecr`` (the
    registry then comes from ECR's GetAuthorizationToken)."""

    registry: str | None
    name: str
    tag: str

    @property
    def ecr(self) -> EcrRegistry | None:
        return EcrRegistry.from_host(self.registry) if self.registry else None

    @property
    def api_host(self) -> str:
        """The host whose ``/v2/`` API holds this repository."""
        if self.registry is None:
            raise ConfigError("no registry known yet", key=OPTION)
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def path(self) -> str:
        """``registry/name`` (what ``docker push`` and the engine call the repository)."""
        return f"{self.registry}/{self.name}" if self.registry else self.name

    @property
    def reference(self) -> str:
        return f"{self.path}:{self.tag}"

    def digest_uri(self, digest: str) -> str:
        """``registry/name@sha256:...``: the image URI SageMaker should be given."""
        return f"{self.path}@{digest}"

    def with_registry(self, registry: str) -> Repository:
        return replace(self, registry=registry)


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse_repository(text: str, *, ecr: bool = False, default_tag: str = DEFAULT_TAG) -> Repository:
    """``REGISTRY/NAME[:TAG]`` (or, with ``ecr``, also a bare ``NAME[:TAG]``) → :class:`Repository`.

    Raises ConfigError naming ``--repository`` and the offending part.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("empty; write REGISTRY/NAME[:TAG]", key=OPTION)
    if "@" in raw:
        raise ConfigError(f"{raw!r} has a digest; a push target takes a tag (REGISTRY/NAME[:TAG])", key=OPTION)
    if "://" in raw:
        raise ConfigError(f"{raw!r}: write the registry without a scheme (host[:port]/name[:tag])", key=OPTION)
    if any(ch.isspace() for ch in raw) or raw.startswith("/") or raw.endswith("/") or "//" in raw:
        raise ConfigError(f"{raw!r} is not a repository reference (REGISTRY/NAME[:TAG])", key=OPTION)

    registry: str | None = None
    rest = raw
    first, slash, remainder = raw.partition("/")
    if slash and _looks_like_registry(first):
        registry, rest = first, remainder
    tag = default_tag
    name = rest
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not tag:
            raise ConfigError(f"{raw!r} ends in ':' with no tag", key=OPTION)

    if registry is not None:
        if not DOMAIN_RE.fullmatch(registry):
            raise ConfigError(f"registry {registry!r} is not a host[:port]", key=OPTION)
        if registry.lower() in ("index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in name:
            name = f"library/{name}"
        if ecr and EcrRegistry.from_host(registry) is None:
            raise ConfigError(
                f"{registry!r} is not an ECR registry (<account>.dkr.ecr.<region>.amazonaws.com); with --ecr give "
                "an ECR URI or the repository name alone", key=OPTION)
    if name != name.lower():
        raise ConfigError(f"repository name {name!r} must be lowercase", key=OPTION)
    if ecr:
        check_ecr_name(name)
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"repository name {name!r} is not valid: lowercase letters and digits, separated by '.', '_', '__' "
            "or '-', path components joined by '/'", key=OPTION)
    if not TAG_RE.fullmatch(tag):
        raise ConfigError(
            f"tag {tag!r} is not valid: 1-128 characters of letters, digits, '_', '.', '-', not starting "
            "with '.' or '-'", key=OPTION)
    repository = Repository(registry=registry, name=name, tag=tag)
    if len(repository.path) > NAME_TOTAL_MAX:
        raise ConfigError(f"{repository.path!r} is longer than {NAME_TOTAL_MAX} characters", key=OPTION)

    if registry is None and not ecr:
        raise ConfigError(
            f"{raw!r} names no registry; write REGISTRY/NAME[:TAG] (e.g. registry.example.com:5000/my-model:1.0, "
            "docker.io/you/my-model) or pass --ecr to push to your account's ECR registry", key=OPTION)
    return repository


def check_ecr_name(name: str) -> None:
    """ECR's RepositoryName rule (BOTO-ECR): 2-256 characters matching :data:`NAME_RE`."""
    if not ECR_NAME_MIN <= len(name) <= ECR_NAME_MAX:
        raise ConfigError(
            f"ECR repository name {name!r} has {len(name)} characters; ECR allows {ECR_NAME_MIN}-{ECR_NAME_MAX}",
            key=OPTION)
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"ECR repository name {name!r} breaks ECR's naming rule: lowercase letters and digits separated by "
            "'.', '_', '__' or '-', namespaces joined by '/'", key=OPTION)
