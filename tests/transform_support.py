"""Shared by the transform tests (a plain module: ``from transform_support import ...``): an echo model for
the real ``serve`` (its ``inference.py`` runs in process mode and in the default serve image) and input
builders."""

from __future__ import annotations

import textwrap
from pathlib import Path

ECHO_INFERENCE = '''
import os
import time


def model_fn(model_dir):
    return "echo"


def transform_fn(model, data, content_type, accept):
    raw = data if isinstance(data, bytes) else data.encode()
    if b"FAIL" in raw:
        raise ValueError("refusing a record with FAIL")
    if b"SLOW" in raw:
        time.sleep(0.5)
    if (content_type or "").startswith("text/"):
        lines = [line.upper() for line in raw.split(b"\\n") if line]
        return b"".join(line + b"\\n" for line in lines), "text/csv"
    return b"<" + raw + b">", "application/octet-stream"
'''


def write_echo_model(base: Path) -> Path:
    """A model directory whose ``inference.py`` answers text with its lines upper-cased (one output line per
    input line), binary as ``<payload>``; 500 for a payload containing ``FAIL``; slow for ``SLOW``."""
    code = base / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "inference.py").write_text(textwrap.dedent(ECHO_INFERENCE))
    return base


def write_broken_model(base: Path) -> Path:
    """A model whose ``model_fn`` raises: ``/ping`` never answers 200."""
    code = base / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "inference.py").write_text("def model_fn(model_dir):\n    raise RuntimeError('no model here')\n")
    return base


def recordio(payloads: list[bytes]) -> bytes:
    from smbyoc.emulator.transform.records import encode_recordio

    return b"".join(encode_recordio(p) for p in payloads)


def tfrecord(payloads: list[bytes]) -> bytes:
    from smbyoc.emulator.transform.records import encode_tfrecord

    return b"".join(encode_tfrecord(p) for p in payloads)
