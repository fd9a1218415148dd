"""A real Docker registry on loopback for tests: Debian's ``docker-registry`` (scripts/setup-host-packages), with
a temporary config (storage in a temporary directory, a free 127.0.0.1 port, optional htpasswd auth, optional
read-only mode), started as a subprocess and stopped afterwards. The engine pushes to 127.0.0.0/8 over plain HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import free_port
from host_tools import require_host_tool

#: Every manifest type, so the registry answers with whatever it stored (an index would come back as one).
ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list"
          ".v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:port
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def get(self, path: str, *, method: str = "GET", data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        all_headers = {"Accept": ACCEPT, **(headers or {})}
        if self.user:
            all_headers["Authorization"] = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()


@contextlib.contextmanager
def run_registry(tmp: Path, *, user: str | None = None, password: str | None = None,
                 readonly: bool = False) -> Iterator[Registry]:
    binary = require_host_tool("docker-registry")
    port = free_port()
    tmp.mkdir(parents=True)
    auth = ""
    if user is not None:
        htpasswd = require_host_tool("htpasswd")
        line = subprocess.run([htpasswd, "-Bbn", user, password or ""], check=True, capture_output=True, text=True)
        (tmp / "htpasswd").write_text(line.stdout)
        auth = f"auth:\n  htpasswd:\n    realm: smbyoc-test\n    path: {tmp / 'htpasswd'}\n"
    maintenance = "  maintenance:\n    readonly:\n      enabled: true\n    uploadpurging:\n      enabled: false\n" \
        if readonly else "  maintenance:\n    uploadpurging:\n      enabled: false\n"
    (tmp / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n  delete:\n    enabled: true\n{maintenance}"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    log = (tmp / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(tmp / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}", user, password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, _ = Registry(registry.host).get("/v2/")
                if status in (200, 401):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {(tmp / 'registry.log').read_text()[-2000:]}",
                            pytrace=False)
            time.sleep(0.05)
        yield registry
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
