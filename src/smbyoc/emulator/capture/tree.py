"""The capture tree (contract-endpoints.md §4.3): ``{dest}/{endpoint}/{variant}/yyyy/mm/dd/hh/<name>.jsonl``.

:func:`hour_prefix` and :func:`capture_file_name` name what the writer creates; :func:`scan_capture_tree` finds
those files again and :meth:`CaptureTree.records` reads them, setting aside what it cannot read."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from smbyoc.emulator.capture.record import CapturedRecord, parse_record
from smbyoc.errors import ConfigError

_HOUR_PARTS = (re.compile(r"\d{4}"), re.compile(r"\d{2}"), re.compile(r"\d{2}"), re.compile(r"\d{2}"))


def hour_prefix(epoch: float) -> str:
    """``yyyy/mm/dd/hh`` of the UTC hour ``epoch`` falls in (§4.3: "organized based on the hour when the
    invocation occurred")."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y/%m/%d/%H")


def capture_file_name(epoch: float, unique: str | None = None) -> str:
    """``MM-SS-mmm-<uuid4>.jsonl`` (§4.3, inferred from a real key) for a file whose first event is ``epoch``."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return f"{moment:%M-%S}-{moment.microsecond // 1000:03d}-{unique or uuid.uuid4()}.jsonl"


@dataclass(frozen=True)
class Malformed:
    """A line (or, with ``line`` 0, a whole file) that could not be read as a capture record."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


@dataclass
class CaptureTree:
    """The capture files under ``root``: ``files`` as ``(endpoint, variant, path)`` in time order,
    ``unfinished`` (``.partial`` files a writer has not closed) and ``ignored`` (anything else).
    :meth:`records` reads them; lines it cannot read are appended to ``malformed``."""

    root: Path
    files: list[tuple[str, str, Path]] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)

    def records(self) -> Iterator[CapturedRecord]:
        for endpoint, variant, path in self.files:
            try:
                handle = path.open("rb")
            except OSError as e:
                self.malformed.append(Malformed(path, 0, f"cannot read: {e.strerror or e}"))
                continue
            with handle:
                for number, raw in enumerate(handle, start=1):
                    try:
                        parsed = parse_record(raw.rstrip(b"\r\n").decode("utf-8"))
                    except UnicodeDecodeError:
                        self.malformed.append(Malformed(path, number, "not UTF-8"))
                        continue
                    except ValueError as e:
                        self.malformed.append(Malformed(path, number, str(e)))
                        continue
                    yield replace(parsed, endpoint=endpoint, variant=variant, file=path, line=number)


def scan_capture_tree(root: Path) -> CaptureTree:
    """Find the capture files under ``root`` (a capture destination, or an endpoint or variant directory in one):
    ``<endpoint>/<variant>/yyyy/mm/dd/hh/<name>.jsonl``."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigError(f"{what} (give the capture destination directory)", source=str(root))
    tree = CaptureTree(root)
    root = root.resolve()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(".partial"):
            tree.unfinished.append(path)
            continue
        hours = [parent.name for parent in path.parents[:4]][::-1]
        if (path.suffix == ".jsonl" and len(path.parents) > 6
                and all(pattern.fullmatch(part) for pattern, part in zip(_HOUR_PARTS, hours, strict=True))):
            tree.files.append((path.parents[5].name, path.parents[4].name, path))
        else:
            tree.ignored.append(path)
    tree.files.sort(key=lambda entry: (entry[0], entry[1], entry[2]))
    return tree
