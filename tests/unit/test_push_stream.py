"""The pieces around the push: the engine's push stream reduced to progress lines and one error line, the local
image's pre-check (OCI store, platform), the manifest media types SageMaker takes, which registries Docker treats
as insecure, and the registry API's Bearer-token challenge (docker-registry on loopback only speaks Basic; the
Bearer flow of Docker Hub/GHCR is exercised here against a small token server)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from smbyoc.errors import DockerError
from smbyoc.push.credentials import RegistryCredentials
from smbyoc.push.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    api_base_urls,
    is_insecure,
    read_manifest,
    sagemaker_problem,
)
from smbyoc.push.registry import PushStream, human_size, precheck, refused_message

DIGEST = "sha256:72789fb7719b9fc343425a4e3c49e0b6650e17ae210da9bbd047d50999a5443b"

# Recorded from Docker Engine 20.10 pushing to docker-registry 2.8 (two layers, one already there).
EVENTS: list[dict[str, Any]] = [
    {"status": "The push refers to repository [127.0.0.1:5000/exp/base]"},
    {"status": "Preparing", "progressDetail": {}, "id": "aaa"},
    {"status": "Preparing", "progressDetail": {}, "id": "bbb"},
    {"status": "Waiting", "progressDetail": {}, "id": "aaa"},
    {"status": "Layer already exists", "progressDetail": {}, "id": "bbb"},
    {"status": "Pushing", "progressDetail": {"current": 512, "total": 12_300_000}, "progress": "[>  ]", "id": "aaa"},
    {"status": "Pushing", "progressDetail": {"current": 9000, "total": 12_300_000}, "progress": "[=> ]", "id": "aaa"},
    {"status": "Pushing", "progressDetail": {"current": 12_300_000, "total": 12_300_000}, "id": "aaa"},
    {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
    {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
    {"status": f"t1: digest: {DIGEST} size: 739"},
    {"progressDetail": {}, "aux": {"Tag": "t1", "Digest": DIGEST, "Size": 739}},
]


def test_stream_lines_are_per_layer_and_deduplicated() -> None:
    stream = PushStream("127.0.0.1:5000/exp/base:t1")
    lines = [line for line in (stream.feed(e) for e in EVENTS) if line]
    assert lines == [
        "The push refers to repository [127.0.0.1:5000/exp/base]",
        "bbb: layer already exists",
        "aaa: pushing 12.3 MB",
        "aaa: pushed",
    ]
    result = stream.result()
    assert (result.digest, result.size, result.layers_pushed, result.layers_present) == (DIGEST, 739, 1, 1)


@pytest.mark.parametrize(("error", "line"), [
    ("no basic auth credentials",
     "push r:1: the registry refused the credentials: no basic auth credentials (pass --username)"),
    ("unauthorized: authentication required",
     "push r:1: the registry refused the credentials: unauthorized: authentication required (pass --username)"),
    ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
     'push r:1: cannot reach the registry: Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection '
     "refused"),
    ("tag invalid: The image tag '1' already exists in the 'm' repository and cannot be overwritten because the "
     "repository is immutable.",
     "push r:1: the registry refused the push: tag invalid: The image tag '1' already exists in the 'm' repository "
     "and cannot be overwritten because the repository is immutable."),
    ("received unexpected HTTP status: 405 Method Not Allowed\n",
     "push r:1: the registry refused the push: received unexpected HTTP status: 405 Method Not Allowed"),
])
def test_stream_errors_become_one_line(error: str, line: str) -> None:
    stream = PushStream("r:1", auth_hint="pass --username")
    stream.feed(EVENTS[0])
    with pytest.raises(DockerError) as info:
        stream.feed({"errorDetail": {"message": error}, "error": error})
    assert str(info.value) == line
    assert refused_message("r:1", error, hint="pass --username") == line


def test_precheck_refuses_an_oci_stored_image_and_notes_the_platform() -> None:
    for media_type in (OCI_INDEX, OCI_MANIFEST):
        with pytest.raises(DockerError, match=r"--provenance=false --output type=docker"):
            precheck({"Descriptor": {"mediaType": media_type}, "Architecture": "amd64", "Os": "linux"}, "img")
    assert precheck({"Descriptor": {"mediaType": DOCKER_MANIFEST}, "Architecture": "amd64", "Os": "linux"},
                    "img") == []
    assert precheck({"Architecture": "amd64", "Os": "linux"}, "img") == []
    (note,) = precheck({"Architecture": "arm64", "Os": "linux"}, "img")
    assert note.startswith("img is linux/arm64: SageMaker runs it only on Graviton inference instances (ml.c6g")
    assert "training and processing need linux/amd64" in note


def test_media_types_sagemaker_takes() -> None:
    assert sagemaker_problem(DOCKER_MANIFEST) is None
    assert sagemaker_problem(DOCKER_MANIFEST_LIST) is None
    oci = sagemaker_problem(OCI_MANIFEST)
    assert oci is not None and "Unsupported manifest media type" in oci and "--provenance=false" in oci
    index = sagemaker_problem(OCI_INDEX)
    assert index is not None and "an OCI image index" in index
    other = sagemaker_problem("application/vnd.docker.distribution.manifest.v1+prettyjws")
    assert other is not None and "not one SageMaker takes" in other


# `docker info` of Docker Engine 20.10 with its defaults (verified: 127.0.0.0/8 is insecure out of the box).
DEFAULT_REGISTRY_CONFIG = {
    "IndexConfigs": {"docker.io": {"Mirrors": [], "Name": "docker.io", "Official": True, "Secure": True}},
    "InsecureRegistryCIDRs": ["127.0.0.0/8"], "Mirrors": [],
}


@pytest.mark.parametrize(("host", "insecure"), [
    ("127.0.0.1:5000", True), ("127.9.9.9", True), ("localhost:5000", True), ("docker.io", False),
    ("10.0.0.1:5000", False), ("[::1]:5000", False),
])
def test_insecure_registries(host: str, insecure: bool) -> None:
    assert is_insecure(host, DEFAULT_REGISTRY_CONFIG) is insecure


def test_insecure_registry_index_configs_win() -> None:
    config = {"IndexConfigs": {"reg.lan:5000": {"Secure": False}, "127.0.0.1:6000": {"Secure": True}},
              "InsecureRegistryCIDRs": ["127.0.0.0/8"]}
    assert is_insecure("reg.lan:5000", config) is True
    assert is_insecure("127.0.0.1:6000", config) is False
    assert api_base_urls("h:1", insecure=True) == ["https://h:1", "http://h:1"]
    assert api_base_urls("h:1", insecure=False) == ["https://h:1"]


def test_human_size() -> None:
    assert [human_size(n) for n in (12, 1234, 12_300_000, 4.5e9)] == ["12 B", "1.2 kB", "12.3 MB", "4.5 GB"]


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()


@pytest.fixture()
def token_registry() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A registry that answers 401 with a Bearer challenge and a token server that wants Basic credentials."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append({"path": self.path, "auth": self.headers.get("Authorization", ""),
                         "accept": self.headers.get("Accept", "")})
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.startswith("/token"):
                ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ci:p:w").decode()
                self.send_response(200 if ok else 401)
                self.end_headers()
                self.wfile.write(json.dumps({"token": "T0K"}).encode() if ok else b"{}")
            elif self.headers.get("Authorization") == "Bearer T0K":
                self.send_response(200)
                self.send_header("Content-Type", OCI_INDEX)
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(MANIFEST).hexdigest())
                self.end_headers()
                self.wfile.write(MANIFEST)
            else:
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Bearer realm="{base}/token",service="reg",scope="x"')
                self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_bearer_challenge(token_registry: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = token_registry
    found = read_manifest([url], "team/m", "v1", RegistryCredentials("ci", "p:w"))
    assert found.media_type == OCI_INDEX
    assert found.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert [s["path"] for s in seen] == ["/v2/team/m/manifests/v1", "/token?scope=repository%3Ateam%2Fm%3Apull&"
                                         "service=reg", "/v2/team/m/manifests/v1"]
    assert all(t in seen[0]["accept"] for t in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX))


def test_bearer_challenge_with_bad_credentials_is_one_line(token_registry: tuple[str, list[dict[str, str]]]) -> None:
    url, _ = token_registry
    with pytest.raises(DockerError) as info:
        read_manifest([url], "team/m", "v1", RegistryCredentials("ci", "wrong"))
    assert str(info.value) == f"GET {url}/token: HTTP 401: the token server refused the credentials"


def test_no_registry_answers(token_registry: tuple[str, list[dict[str, str]]]) -> None:
    from helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DockerError, match=f"^GET {dead}/v2/m/manifests/v1: "):
        read_manifest([dead], "m", "v1", None)
    # The next base URL is tried when one cannot be reached (Docker's https-then-http for insecure registries).
    url, _ = token_registry
    with pytest.raises(DockerError, match="the token server wants credentials"):
        read_manifest([dead, url], "m", "v1", None)
