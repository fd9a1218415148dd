"""Package repositories a variant needs besides the Python index (the Neuron apt and pip repositories).

:func:`check_reachable` lets a build fail early with one line naming the repository it cannot reach;
:func:`fetch_debs` downloads ``.deb`` files on the host (whose trust store the proxy's CA is in), so the
image build installs them with ``dpkg -i`` and reaches no network.
"""

from __future__ import annotations

import gzip
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from smbyoc.errors import BuildError
from smbyoc.images.variants import AptRepository

logger = logging.getLogger(__name__)

_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def check_reachable(url: str, what: str, timeout: float = 10.0) -> None:
    """Raise BuildError unless ``url`` gives any HTTP answer within ``timeout`` seconds."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the server answered (a 403/404 for the bare URL is still an answer)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BuildError(f"{what} {url} cannot be reached from this machine ({reason})") from e


def parse_packages_index(text: str) -> dict[str, list[dict[str, str]]]:
    """Stanzas of a Debian ``Packages`` index, grouped by package name."""
    result: dict[str, list[dict[str, str]]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" in fields and "Filename" in fields:
            result.setdefault(fields["Package"], []).append(fields)
    return result


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", version) if p]


def newest(stanzas: Iterable[dict[str, str]]) -> dict[str, str]:
    return max(stanzas, key=lambda s: _version_key(s.get("Version", "")))


def fetch_debs(repo: AptRepository, arch: str, dest: Path, timeout: float = 60.0) -> list[Path]:
    """Download the newest ``.deb`` of each of ``repo.packages`` for ``arch`` into ``dest``."""
    deb_arch = _DEB_ARCH[arch]
    index_url = f"{repo.url}/dists/{repo.suite}/{repo.component}/binary-{deb_arch}/Packages.gz"
    try:
        with urllib.request.urlopen(index_url, timeout=timeout) as response:
            text = gzip.decompress(response.read()).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"cannot read the package index {index_url}: {getattr(e, 'reason', e)}") from e
    index = parse_packages_index(text)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in repo.packages:
        if name not in index:
            raise BuildError(f"package {name} is not in {index_url}")
        stanza = newest(index[name])
        url = f"{repo.url}/{stanza['Filename']}"
        target = dest / Path(stanza["Filename"]).name
        logger.info("fetching %s %s", name, stanza.get("Version"))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise BuildError(f"cannot download {url}: {getattr(e, 'reason', e)}") from e
        paths.append(target)
    return paths
