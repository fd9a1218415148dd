"""Logging set-up for entry points only (``train``, ``serve``, ``smbyoc``; modules never call it), and text
made safe for a terminal."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO, stream: object = None) -> None:
    """Configure the root logger once, writing to stderr (or ``stream``)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(FORMAT))
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # boto3/botocore log their own chatter at INFO ("Found credentials in environment variables"); smbyoc's
    # AWS errors are translated and reported once (smbyoc.aws.client), so theirs show only with -vv.
    for noisy in ("boto3", "botocore", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with every non-printable character but newline and tab shown escaped, as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN`` (ESC is ``\\x1b``): a failure file cannot drive the terminal."""
    return "".join(c if c.isprintable() or c in "\n\t" else _escape(c) for c in text)
