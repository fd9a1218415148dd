"""Read a pushed image's manifest back from the registry (Docker Registry HTTP API v2) and judge its media type.

``GET /v2/<name>/manifests/<tag>`` with an ``Accept`` header naming every manifest type, so the registry returns
what it stores rather than a conversion; the digest is the SHA-256 of the body (checked against the
``Docker-Content-Digest`` header when sent). Authentication follows the registry's ``WWW-Authenticate``
challenge: ``Basic`` (docker-registry with htpasswd, ECR) or ``Bearer`` (token servers: Docker Hub, GHCR...).

Which scheme: Docker talks HTTPS to a registry unless the engine marks it insecure (``InsecureRegistryCIDRs``,
127.0.0.0/8 by default, or ``--insecure-registry``); then it tries HTTPS without verification, then plain
HTTP. :func:`api_base_urls` does the same.

SageMaker takes Docker V2 Schema 2 manifests and manifest lists and refuses OCI manifests and indexes
("Unsupported manifest media type", contract-endpoints.md §8.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smbyoc.errors import DockerError
from smbyoc.push.credentials import RegistryCredentials

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX))
SAGEMAKER_MEDIA_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})
#: ECR's manifest size limit (BOTO-ECR); nothing larger is a manifest worth reading.
MANIFEST_MAX = 4_194_304
PROVENANCE_HINT = ("rebuild with `docker buildx build --provenance=false --output type=docker` (Docker V2 "
                   "Schema 2), or turn off Docker's containerd image store, and push again")


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    size: int


def sagemaker_problem(media_type: str) -> str | None:
    """Why SageMaker would refuse an image whose manifest has ``media_type``; None when it takes it."""
    if media_type in SAGEMAKER_MEDIA_TYPES:
        return None
    if media_type in (OCI_MANIFEST, OCI_INDEX):
        kind = "an OCI image index" if media_type == OCI_INDEX else "an OCI image manifest"
        return (f"the manifest is {kind} ({media_type}), which SageMaker refuses ('Unsupported manifest media "
                f"type'); {PROVENANCE_HINT}")
    takes = ", ".join(sorted(SAGEMAKER_MEDIA_TYPES))
    return f"the manifest's media type {media_type!r} is not one SageMaker takes ({takes})"


def is_insecure(host: str, registry_config: Mapping[str, Any] | None) -> bool:
    """Whether the Docker Engine treats ``host[:port]`` as an insecure registry (``docker info``'s
    ``RegistryConfig``: an ``IndexConfigs`` entry with ``Secure: false``, or an address in
    ``InsecureRegistryCIDRs``)."""
    config = registry_config or {}
    index = (config.get("IndexConfigs") or {}).get(host)
    if isinstance(index, dict) and "Secure" in index:
        return not index["Secure"]
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or host
    try:
        addresses = [ipaddress.ip_address(hostname)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(hostname, None)
        except OSError:
            return False
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    networks = []
    for cidr in config.get("InsecureRegistryCIDRs") or ():
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue
    return any(address in network for address in addresses for network in networks
               if address.version == network.version)


def api_base_urls(host: str, *, insecure: bool) -> list[str]:
    """Base URLs to try, in Docker's order."""
    return [f"https://{host}", f"http://{host}"] if insecure else [f"https://{host}"]


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class _Reader:
    def __init__(self, credentials: RegistryCredentials | None, *, verify: bool, timeout: float) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.context = ssl.create_default_context()
        if not verify:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def open(self, url: str, headers: Mapping[str, str]) -> Any:
        request = urllib.request.Request(url, headers=dict(headers))
        return urllib.request.urlopen(request, timeout=self.timeout, context=self.context)

    def get(self, url: str, name: str) -> tuple[bytes, Mapping[str, str]]:
        headers = {"Accept": ACCEPT, "User-Agent": "smbyoc-push"}
        try:
            return self._read(self.open(url, headers))
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
            scheme, params = _challenge(e.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        elif scheme == "bearer" and params.get("realm"):
            headers["Authorization"] = f"Bearer {self._token(params, name)}"
        else:
            raise DockerError(f"GET {url}: the registry wants credentials ({scheme or 'no challenge'}) and none "
                              "were given (--username/--password-stdin or docker login)")
        return self._read(self.open(url, headers))

    def _token(self, params: Mapping[str, str], name: str) -> str:
        query = {"scope": f"repository:{name}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = f"{params['realm']}?{urllib.parse.urlencode(query)}"
        headers = {"User-Agent": "smbyoc-push"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        try:
            body, _ = self._read(self.open(url, headers))
        except urllib.error.HTTPError as e:
            who = "refused the credentials" if self.credentials else "wants credentials (--username/--password-stdin)"
            raise DockerError(f"GET {params['realm']}: HTTP {e.code}: the token server {who}") from e
        try:
            answer = json.loads(body)
        except ValueError as e:
            raise DockerError(f"GET {params['realm']}: the token server's answer is not JSON") from e
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not token:
            raise DockerError(f"GET {params['realm']}: the token server's answer has no token")
        return str(token)

    @staticmethod
    def _read(response: Any) -> tuple[bytes, Mapping[str, str]]:
        with response:
            body = response.read(MANIFEST_MAX + 1)
            if len(body) > MANIFEST_MAX:
                raise DockerError(f"GET {response.url}: the manifest is larger than {MANIFEST_MAX} bytes")
            return body, response.headers


def read_manifest(bases: Sequence[str], name: str, reference: str, credentials: RegistryCredentials | None, *,
                  verify: bool = True, timeout: float = 30) -> Manifest:
    """The manifest ``name:reference`` as the registry stores it: digest, media type, size.

    ``bases`` are tried in order (a connection or TLS failure moves to the next one); raises DockerError with
    one line when none answers with the manifest.
    """
    reader = _Reader(credentials, verify=verify, timeout=timeout)
    last: str = "no registry URL"
    for base in bases:
        url = f"{base.rstrip('/')}/v2/{name}/manifests/{urllib.parse.quote(reference, safe=':@')}"
        try:
            body, headers = reader.get(url, name)
        except urllib.error.HTTPError as e:
            why = " (the registry refused the credentials)" if e.code in (401, 403) else ""
            raise DockerError(f"GET {url}: HTTP {e.code} {e.reason}{why}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = f"GET {url}: {getattr(e, 'reason', e)}"
            continue
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        sent = headers.get("Docker-Content-Digest")
        if sent and sent.startswith("sha256:") and sent != digest:
            raise DockerError(f"GET {url}: the registry says the digest is {sent} but the manifest hashes to {digest}")
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        if media_type in ("", "application/json", "application/octet-stream"):
            with contextlib.suppress(ValueError, AttributeError):
                media_type = str(json.loads(body).get("mediaType") or media_type)
        return Manifest(digest=digest, media_type=media_type, size=len(body))
    raise DockerError(last)
