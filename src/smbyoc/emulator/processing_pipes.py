"""Pipe input mode of processing jobs: where an input's FIFOs appear in the container, and what they carry.

SageMaker documents only that in Pipe mode it "streams input data from the source directly to your processing
container into named pipes without using the ML storage volume" (BOTO ``ProcessingS3Input.S3InputMode``), and
that ``S3CompressionType: Gzip`` "can only be used when Pipe mode is specified" (the data is decompressed
while streaming). Where the pipes lie is undocumented (UNCONFIRMED): the emulator's choice is training's
convention (contract.md §1.4, ``/opt/ml/input/data/<channel>_<epoch>``) applied to the input's ``LocalPath``,
``<LocalPath>_<epoch>`` (``/opt/ml/processing/input/raw_0``, then ``_1``... for as many passes as the program
reads). The pattern is configurable: ``ProcessingJobSpec.pipe_path``, the ``--pipe-path`` option, or the
environment variable :data:`PIPE_PATH_ENV`, with the placeholders ``{local_path}`` (the normalised
``LocalPath``), ``{input_name}`` and ``{epoch}``.

Each instance's pipe carries its share of the input (``ShardedByS3Key``: every N-th object by sorted key, as in
File mode), objects in key order, each ``Gzip`` object decompressed; the feeding is
:mod:`smbyoc.emulator.pipe_feeder`'s, training's.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path

from smbyoc.emulator.pipe_feeder import PipeSource
from smbyoc.emulator.processing_spec import PROCESSING_ROOT, ProcessingInput, ProcessingJobSpec
from smbyoc.errors import ConfigError

#: The environment variable that sets the pattern when neither the spec nor an option does.
PIPE_PATH_ENV = "SMBYOC_PROCESSING_PIPE_PATH"
#: The emulator's choice (UNCONFIRMED): training's ``<channel>_<epoch>`` next to the input's ``LocalPath``.
DEFAULT_PIPE_PATH = "{local_path}_{epoch}"
PIPE = "Pipe"


def pipe_pattern(spec: ProcessingJobSpec) -> str:
    """The spec's pattern, else :data:`PIPE_PATH_ENV`'s, else :data:`DEFAULT_PIPE_PATH`."""
    return spec.pipe_path or os.environ.get(PIPE_PATH_ENV) or DEFAULT_PIPE_PATH


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def fifo_path(pattern: str, item: ProcessingInput, epoch: int) -> str:
    """The container path of ``item``'s FIFO of pass ``epoch`` (normalised)."""
    return posixpath.normpath(pattern.format(local_path=posixpath.normpath(item.local_path),
                                             input_name=item.name, epoch=epoch))


def feeder_pattern(pattern: str, item: ProcessingInput) -> str:
    """``item``'s FIFO path relative to ``/opt/ml/processing`` with ``{epoch}`` left to the feeder."""
    path = pattern.format(local_path=_escape(posixpath.normpath(item.local_path)), input_name=_escape(item.name),
                          epoch="{epoch}")
    return posixpath.relpath(posixpath.normpath(path), PROCESSING_ROOT)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_pipe_paths(spec: ProcessingJobSpec, *, option: str = "--pipe-path") -> None:
    """One ConfigError when the pattern is malformed or puts a FIFO outside ``/opt/ml/processing/``, inside an
    output's or a File-mode input's ``LocalPath``, or where another Pipe input's FIFO is."""
    piped = [item for item in spec.inputs if item.input_mode == PIPE]
    if not piped:
        return
    pattern = pipe_pattern(spec)
    key = f"{option} {pattern}" if spec.pipe_path else (
        f"{PIPE_PATH_ENV}={pattern}" if os.environ.get(PIPE_PATH_ENV) else f"pipe path {pattern}")
    if "{epoch}" not in pattern:
        raise ConfigError("must contain {epoch} (each pass over the input gets its own FIFO)", key=key)
    seen: dict[str, str] = {}
    for item in piped:
        try:
            first, second = fifo_path(pattern, item, 0), fifo_path(pattern, item, 1)
            feeder_pattern(pattern, item)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"bad pattern ({e!s}); the placeholders are {{local_path}}, {{input_name}} and "
                              "{epoch}", key=key) from None
        if first == second:
            raise ConfigError("{epoch} must be part of the path", key=key)
        if not first.startswith(PROCESSING_ROOT + "/"):
            raise ConfigError(f"input {item.name!r}'s pipe {first} must lie below {PROCESSING_ROOT}/", key=key)
        for output in spec.outputs:
            if _inside(first, posixpath.normpath(output.local_path)):
                raise ConfigError(f"input {item.name!r}'s pipe {first} lies in output {output.name!r}'s "
                                  f"LocalPath {output.local_path}", key=key)
        for other in spec.inputs:
            if other.input_mode != PIPE and _inside(first, posixpath.normpath(other.local_path)):
                raise ConfigError(f"input {item.name!r}'s pipe {first} lies in File-mode input {other.name!r}'s "
                                  f"LocalPath {other.local_path}", key=key)
        if first in seen:
            raise ConfigError(f"inputs {seen[first]!r} and {item.name!r} would share the pipe {first}", key=key)
        seen[first] = item.name


ObjectLister = Callable[[ProcessingInput, int, int], Sequence[tuple[str, Path]]]


def pipe_sources(spec: ProcessingJobSpec, host: str, objects: ObjectLister) -> tuple[list[PipeSource], list[str]]:
    """``(sources, patterns)``: what each Pipe-mode input's FIFOs carry on ``host`` (``objects(input, host
    index, host count)``: its share, as File mode copies it) and where they lie, relative to the host's
    ``/opt/ml/processing`` (for :func:`smbyoc.emulator.pipe_feeder.start_feeders`)."""
    pattern = pipe_pattern(spec)
    index, count = spec.hosts.index(host), spec.instance_count
    sources, patterns = [], []
    for item in spec.inputs:
        if item.input_mode != PIPE:
            continue
        found = objects(item, index, count)
        sources.append(PipeSource(item.name, tuple(path for _, path in found), "None", item.compression))
        patterns.append(feeder_pattern(pattern, item))
    return sources, patterns

