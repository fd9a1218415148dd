"""The ``/opt/ml/output/failure`` and ``/opt/ml/output/success`` files.

SageMaker turns the first 1024 characters of ``/opt/ml/output/failure`` into the job's
``FailureReason`` (contract.md §1.6), so :func:`format_failure` puts everything useful there — the
error type, the message and the tail of the program's stderr (the last lines of a traceback) — and
appends the longer details after it for people who read the whole file.

The failure file is written **first writer wins**: a program that wrote its own failure description
keeps it (the toolkit does the same). Writing is atomic: the text goes to a temporary file that is then
hard-linked to the final name, which fails instead of replacing an existing file.

Use these from your own ``train`` program too::

    from smbyoc.training.failure import write_failure, format_failure
    write_failure(env.paths, format_failure("DataError", "channel 'train' is empty"))
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from smbyoc.paths import Paths

log = logging.getLogger(__name__)

#: SageMaker keeps this many characters of the failure file as ``FailureReason``.
FAILURE_REASON_LIMIT = 1024
#: The error type SageMaker puts before the failure text of a program that failed.
ALGORITHM_ERROR = "AlgorithmError"
#: Appended where text was cut.
TRUNCATED = "…[truncated]"
#: Longest message kept in the first 1024 characters, so that the stderr tail still fits.
_HEAD_LIMIT = 480
#: Longest part of the failure file after the reason (full message and stderr tail).
DETAILS_LIMIT = 64 * 1024
_DETAILS_SEPARATOR = "\n\n--- details ---\n"


def _cut_end(text: str, limit: int) -> str:
    """Keep the start of ``text``; mark the cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def _cut_start(text: str, limit: int) -> str:
    """Keep the end of ``text`` (for stderr, where the last lines matter); mark the cut."""
    if len(text) <= limit:
        return text
    marker = "[truncated]…"
    keep = max(0, limit - len(marker))
    return marker + (text[-keep:] if keep else "")


def format_failure(error_type: str, message: str, stderr_tail: str = "", *, detail: str = "") -> str:
    """The failure text: ``<type>: <message>`` then the stderr tail, the first 1024 characters useful.

    The reason (at most 1024 characters) holds the error type, the message (cut at about 480
    characters) and as much of the *end* of ``stderr_tail`` as fits. After it, separated by a
    ``--- details ---`` line, come the full message, ``detail`` and a longer stderr tail.
    """
    message = message.strip()
    tail = stderr_tail.rstrip()
    full_head = f"{error_type}: {message}" if message else error_type
    head = _cut_end(full_head, _HEAD_LIMIT)
    reason = head
    tail_in_reason = not tail
    if tail:
        label = "\nstderr (last lines):\n"
        room = FAILURE_REASON_LIMIT - len(head) - len(label)
        if room > 40:
            reason = head + label + _cut_start(tail, room)
            tail_in_reason = len(tail) <= room
    reason = _cut_end(reason, FAILURE_REASON_LIMIT)
    if head == full_head and tail_in_reason and not detail.strip():
        return reason + "\n"
    parts = [full_head]
    if detail.strip():
        parts.append(detail.strip())
    if tail:
        parts.append("stderr (last lines):\n" + tail)
    details = _cut_start("\n".join(parts), DETAILS_LIMIT)
    return reason + _DETAILS_SEPARATOR + details + "\n"


def _as_paths(paths: Paths | str | Path) -> Paths:
    return paths if isinstance(paths, Paths) else Paths(Path(paths))


def write_failure(paths: Paths | str | Path, text: str) -> bool:
    """Write ``paths.failure_file`` unless it already exists; returns whether this call wrote it.

    ``paths`` is a :class:`~smbyoc.paths.Paths` or the base directory (``/opt/ml``).
    """
    target = _as_paths(paths).failure_file
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        log.info("%s already exists (written by the program); leaving it as it is", target)
        return False
    fd, tmp_name = tempfile.mkstemp(prefix=".failure.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, target)  # atomic, and never replaces an existing file
        except FileExistsError:
            log.info("%s was written meanwhile by someone else; keeping theirs", target)
            return False
        except OSError:
            # File systems without hard links: exclusive create is still first-writer-wins.
            try:
                with open(target, "x", encoding="utf-8", errors="replace") as out:
                    out.write(text)
            except FileExistsError:
                return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_success(paths: Paths | str | Path) -> Path:
    """Create the (empty) success file, as the training toolkit does; returns its path."""
    target = _as_paths(paths).success_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    return target


def algorithm_error_reason(text: str) -> str:
    """The job's ``FailureReason`` when the program failed: ``AlgorithmError: <failure text>``.

    This is what real jobs report (``Failed. Reason: AlgorithmError: ExecuteUserScriptError: ...`` in
    the SDK's exceptions); the whole reason is cut at 1024 characters, the longest ``FailureReason``
    DescribeTrainingJob returns (BOTO ``FailureReason`` max 1024).
    """
    return f"{ALGORITHM_ERROR}: {text}"[:FAILURE_REASON_LIMIT]


def read_failure_reason(paths: Paths | str | Path, limit: int = FAILURE_REASON_LIMIT) -> str | None:
    """The ``FailureReason`` SageMaker would report: the first ``limit`` characters, or None.

    Undecodable bytes become U+FFFD; a missing file gives None (an empty file gives ``""``).
    """
    target = _as_paths(paths).failure_file
    try:
        with open(target, "rb") as f:
            data = f.read(limit * 4 + 4)
    except FileNotFoundError:
        return None
    return data.decode("utf-8", errors="replace")[:limit]
