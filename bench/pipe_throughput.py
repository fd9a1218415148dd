"""Pipe-mode throughput: MB/s from the emulator's feeder into a reader that reads and discards.

Run: .venv/bin/python bench/pipe_throughput.py (256 MiB per epoch, best of 3 epochs per case).
"""

import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

from smbyoc.emulator.pipe_feeder import PipeFeeder, PipeSource

SIZE = 256 << 20


def measure(source: PipeSource, data: Path) -> tuple[float, int]:
    feeder = PipeFeeder(source, data).start()
    best, size = 0.0, 0
    try:
        for epoch in range(3):
            path = data / f"{source.channel}_{epoch}"
            while not path.exists():
                time.sleep(0.01)
            began, size = time.perf_counter(), 0
            with open(path, "rb", buffering=0) as stream:
                while chunk := stream.read(1 << 20):
                    size += len(chunk)
            best = max(best, size / (time.perf_counter() - began) / 1e6)
    finally:
        feeder.stop()
    return best, size


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="smbyoc-bench-pipe-"))
    try:
        blob = root / "blob"
        blob.write_bytes(os.urandom(SIZE))
        zipped = root / "blob.gz"
        zipped.write_bytes(gzip.compress(b"0123456789abcdef" * (SIZE // 16), 1))
        for label, source in (("plain", PipeSource("plain", (blob,))),
                              ("gzip", PipeSource("gzip", (zipped,), compression="Gzip")),
                              ("recordio", PipeSource("recordio", (blob,), record_wrapper="RecordIO"))):
            rate, size = measure(source, root / "data")
            print(f"{label}: {rate:.0f} MB/s ({size / 1e6:.0f} MB per epoch, best of 3)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
