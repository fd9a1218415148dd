"""Size and build time of every image variant that builds on this machine (bench/README.md, "Image variants").

For each row: one or more *cold* builds, then *cached* builds, then the sizes of the last image:

* cold: ``smbyoc build --no-cache`` (no Docker layer cache) with an empty ``SMBYOC_CACHE_DIR`` (the wheelhouse
  is resolved again by ``pip download`` and the smbyoc wheel rebuilt). The base image is not rebuilt (it is the
  ``FROM``), and pip's own download cache and the machine's local package mirrors are what they are.
* cached: the same build again, nothing changed (layer cache and wheelhouse cache hit).
* uncompressed: ``docker image inspect -f {{.Size}}``; compressed: ``docker save TAG | gzip -c | wc -c``
  (gzip level 6, about what a registry stores: each layer gzipped).

Images are tagged ``smbyoc-bench/<kind>:<row>`` and removed at the end (``--keep`` keeps them). Run it from a
snapshot of the tree when editing the source at the same time (the smbyoc wheel is keyed by the source hash)::

    .venv/bin/python bench/image_sizes.py --cold 1 --cached 3 --base-image smbyoc/base:bookworm [--json out.json]
    .venv/bin/python bench/image_sizes.py --rows cuda-train,cuda-serve --cold 1 --cached 1   # the CUDA rows
    .venv/bin/python bench/image_sizes.py --rows arm64-train,arm64-serve --cold 1 --cached 3  # needs scripts/setup-qemu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROWS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    # name, kind, variant, extra labels
    ("cpu-train", "train", "cpu", {}),
    ("cpu-serve", "serve", "cpu", {}),
    ("cpu-serve-mme", "serve", "cpu", {"com.amazonaws.sagemaker.capabilities.multi-models": "true"}),
    ("ei-serve", "serve", "ei", {}),
    ("cuda-train", "train", "cuda", {}),
    ("cuda-serve", "serve", "cuda", {}),
    ("arm64-train", "train", "arm64", {}),
    ("arm64-serve", "serve", "arm64", {}),
)
#: Rows left out unless named in ``--rows``: multi-GB images (CUDA libraries from NVIDIA's wheels) whose cold
#: build and ``docker save | gzip`` take many minutes on a small machine, and the arm64 images (RUN steps under
#: qemu; ``--base-image`` applies to the amd64 rows only, arm64 ones take their variant's default).
HEAVY_ROWS = ("cuda-train", "cuda-serve", "arm64-train", "arm64-serve")


@dataclass
class Row:
    name: str
    kind: str
    variant: str
    cold: list[float]
    cached: list[float]
    size: int = 0
    compressed: int = 0
    built_as: str = ""


def _build(kind: str, variant: str, tag: str, labels: dict[str, str], base: str | None, cache: str,
           nocache: bool) -> float:
    from smbyoc.images.builder import build_image

    started = time.monotonic()
    build_image(kind, variant, tag, base_image=base, labels=labels or None, nocache=nocache,
                cache=Path(cache))
    return time.monotonic() - started


def _compressed(tag: str) -> int:
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    gz = subprocess.Popen(["gzip", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    assert save.stdout is not None and gz.stdout is not None
    save.stdout.close()
    total = 0
    while chunk := gz.stdout.read(1 << 20):
        total += len(chunk)
    if gz.wait() != 0 or save.wait() != 0:
        raise SystemExit(f"docker save {tag} | gzip failed")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=1, help="cold builds per row")
    parser.add_argument("--cached", type=int, default=3, help="cached builds per row")
    parser.add_argument("--base-image", default=None)
    parser.add_argument("--rows", default=",".join(r[0] for r in ROWS if r[0] not in HEAVY_ROWS),
                        help=f"comma-separated rows (default: all but {', '.join(HEAVY_ROWS)})")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the smbyoc-bench/* images")
    args = parser.parse_args()

    import docker

    client = docker.from_env()
    wanted = set(args.rows.split(","))
    results: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="smbyoc-bench-cache.") as shared_cache:
        for name, kind, variant, labels in ROWS:
            if name not in wanted:
                continue
            tag = f"smbyoc-bench/{kind}:{name}"
            base = None if variant == "arm64" else args.base_image
            row = Row(name, kind, variant, [], [])
            for i in range(args.cold):
                with tempfile.TemporaryDirectory(prefix="smbyoc-bench-cold.") as cold_cache:
                    seconds = _build(kind, variant, tag, labels, base, cold_cache, nocache=True)
                row.cold.append(seconds)
                print(f"{name}: cold build {i + 1}: {seconds:.1f} s", file=sys.stderr, flush=True)
            _build(kind, variant, tag, labels, base, shared_cache, nocache=False)  # fills the cache
            for i in range(args.cached):
                seconds = _build(kind, variant, tag, labels, base, shared_cache, nocache=False)
                row.cached.append(seconds)
                print(f"{name}: cached build {i + 1}: {seconds:.1f} s", file=sys.stderr, flush=True)
            image = client.images.get(tag)
            row.size = int(image.attrs["Size"])
            row.built_as = (image.labels or {}).get("org.smbyoc.variant", "")
            row.compressed = _compressed(tag)
            print(f"{name}: {row.size / 1e6:.0f} MB, {row.compressed / 1e6:.0f} MB gzipped", file=sys.stderr,
                  flush=True)
            results.append(row)
            if not args.keep:
                client.images.remove(tag)

    print("| Image | variant label | uncompressed | compressed (gzip) | cold build | cached build |")
    print("|---|---|---|---|---|---|")
    for row in results:
        cold = (f"{statistics.median(row.cold):.0f} s" + (f" (n={len(row.cold)})" if len(row.cold) > 1 else "")
                if row.cold else "—")
        cached = f"{statistics.median(row.cached):.1f} s (n={len(row.cached)})" if row.cached else "—"
        print(f"| {row.name} | {row.built_as} | {row.size / 1e6:,.0f} MB | {row.compressed / 1e6:,.0f} MB "
              f"| {cold} | {cached} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([row.__dict__ for row in results], f, indent=2)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
