"""One instance's work in a transform job: every object it was given, streamed through ``/invocations``.

Per object: the bytes are read (gunzipped), split into records, the input filter applied, packed into
mini-batches (:mod:`smbyoc.emulator.transform.records`); up to ``MaxConcurrentTransforms`` requests are in
flight at once, and the answers are written in input order (joined with their input and filtered per record
when ``JoinSource``/``OutputFilter`` ask for it, then assembled) to ``.<name>.out.<job tag>.partial``, renamed
``<name>.out`` only when the whole object succeeded. A failed object leaves no ``.out``.

Retries (``ModelClientConfig.InvocationsMaxRetries``): a request that times out
(``InvocationsTimeoutInSeconds``), finds no server, or gets a 5xx or 429 answer is sent again, up to that
many more times, after 0.1 s, 0.2 s, 0.4 s...; a 4xx answer is the model refusing the data and fails the
object at once (sending the same bytes again cannot change it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smbyoc.emulator.runtime_client import InvokeError, invoke
from smbyoc.emulator.transform.assemble import assemble
from smbyoc.emulator.transform.filters import apply_filter, join_input
from smbyoc.emulator.transform.inputs import InputObject
from smbyoc.emulator.transform.records import MiniBatch, mini_batches, open_object, read_records, split_output
from smbyoc.emulator.transform.result import ObjectOutcome, ResolvedParameters
from smbyoc.emulator.transform.spec import TransformJobSpec
from smbyoc.errors import ConfigError, SmbyocError, TransformError

log = logging.getLogger(__name__)

MB = 1024 * 1024
RETRY_BASE_DELAY = 0.1


class ObjectFailed(TransformError):
    """One object could not be transformed; the message is its FailureReason."""


class Stopped(Exception):
    """The job is being stopped: the object in progress is abandoned."""


@dataclass(frozen=True)
class Progress:
    """A snapshot for the live display."""

    objects_total: int
    objects_done: int
    objects_failed: int
    records_done: int
    bytes_total: int
    bytes_done: int
    elapsed: float


class Tracker:
    """Thread-safe counters shared by the instances; each change is passed to ``on_progress``."""

    def __init__(self, objects: list[InputObject], on_progress: Callable[[Progress], None] | None) -> None:
        self.objects_total = len(objects)
        self.bytes_total = sum(o.size for o in objects)
        self.objects_done = self.objects_failed = self.records_done = self.bytes_done = 0
        self.began = time.monotonic()
        self.on_progress = on_progress
        self._lock = threading.Lock()

    def add(self, *, records: int = 0, objects: int = 0, failed: int = 0, size: int = 0) -> None:
        with self._lock:
            self.records_done += records
            self.objects_done += objects
            self.objects_failed += failed
            self.bytes_done += size
            snapshot = self.snapshot()
        if self.on_progress is not None:
            self.on_progress(snapshot)

    def snapshot(self) -> Progress:
        return Progress(self.objects_total, self.objects_done, self.objects_failed, self.records_done,
                        self.bytes_total, self.bytes_done, time.monotonic() - self.began)


def _records_label(batch: MiniBatch) -> str:
    first = batch.first_record + 1
    return f"record {first}" if batch.count == 1 else f"records {first}-{first + batch.count - 1}"


class Invoker:
    """``POST /invocations`` with the job's headers, timeout and retries."""

    def __init__(self, url: str, spec: TransformJobSpec, params: ResolvedParameters, stop: threading.Event) -> None:
        self.url = url
        self.spec = spec
        self.chunked = params.max_payload_mb == 0
        self.stop = stop

    def __call__(self, payload: bytes, what: str) -> bytes:
        attempts = 1 + self.spec.invocations_max_retries
        for attempt in range(attempts):
            if self.stop.is_set():
                raise Stopped
            try:
                return invoke(self.url, payload, content_type=self.spec.content_type, accept=self.spec.accept,
                              enforce_limits=False, timeout=self.spec.invocations_timeout, chunked=self.chunked).body
            except InvokeError as e:
                if self.stop.is_set():
                    raise Stopped from e
                retry = e.original_status is None or e.original_status >= 500 or e.original_status == 429
                reason = self._reason(e)
                if not retry or attempt == attempts - 1:
                    tried = f" (tried {attempt + 1} times)" if attempt else ""
                    raise ObjectFailed(f"{what}: {reason}{tried}") from e
                log.warning("%s: %s; retrying (%d of %d)", what, reason, attempt + 1, attempts - 1)
                self.stop.wait(RETRY_BASE_DELAY * 2 ** attempt)
        raise AssertionError("unreachable")

    def _reason(self, error: InvokeError) -> str:
        if error.original_status is not None:
            message = (error.original_message or "").strip().replace("\n", " ")[:300]
            return f"Bad HTTP status received from algorithm: {error.original_status}" + \
                (f" ({message})" if message else "")
        if error.error_code == "ModelError":
            timeout = self.spec.invocations_timeout
            return f"the container did not answer within InvocationsTimeoutInSeconds ({timeout} s)"
        return f"no answer from the container: {error.message}"


class ObjectTransformer:
    """Transforms the objects of one instance (``host``) against the server at ``url``."""

    def __init__(self, host: str, url: str, spec: TransformJobSpec, params: ResolvedParameters,
                 tracker: Tracker, stop: threading.Event, partial_tag: str = "") -> None:
        """``partial_tag``: the job's own mark in its temporary file names (:func:`partial_name`), so that
        jobs sharing an output folder never touch each other's."""
        self.host = host
        self.partial_tag = partial_tag
        self.spec = spec
        self.params = params
        self.tracker = tracker
        self.stop = stop
        self.invoker = Invoker(url, spec, params, stop)
        self.output_root = spec.output_dir

    def run(self, objects: list[InputObject]) -> list[ObjectOutcome]:
        """Every object in order; a failed object does not stop the others (the job fails at the end)."""
        outcomes = []
        with concurrent.futures.ThreadPoolExecutor(self.params.max_concurrent_transforms,
                                                   thread_name_prefix=f"transform-{self.host}") as pool:
            for obj in objects:
                if self.stop.is_set():
                    break
                outcomes.append(self.transform(obj, pool))
        return outcomes

    def transform(self, obj: InputObject, pool: concurrent.futures.Executor) -> ObjectOutcome:
        target = self.output_root / obj.output_key
        partial = target.with_name(partial_name(target.name, self.partial_tag))
        records = 0
        try:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise ConfigError(f"{obj.key}: its output {obj.output_key} needs the folder {e.filename}, where "
                                  "another output is a file (S3 keys can be both; local paths cannot)") from e
            with partial.open("wb") as out:
                for chunk, count in self._outputs(obj, pool):
                    out.write(chunk)
                    records += count
                    self.tracker.add(records=count)
            os.replace(partial, target)
        except Stopped:
            _discard(partial)
            return ObjectOutcome(obj.key, self.host, records)
        except (SmbyocError, OSError) as e:
            _discard(partial)
            reason = str(e) if isinstance(e, SmbyocError) else f"{obj.key}: cannot read or write: {e}"
            kind = "AlgorithmError" if isinstance(e, ObjectFailed) else "ClientError"
            self.tracker.add(failed=1, objects=1, size=obj.size)
            log.error("%s: %s failed: %s", self.host, obj.key, reason)
            return ObjectOutcome(obj.key, self.host, records, failure_reason=f"{kind}: {reason}")
        except BaseException:
            _discard(partial)
            raise
        self.tracker.add(objects=1, size=obj.size)
        return ObjectOutcome(obj.key, self.host, records, output=target)

    def _batches(self, obj: InputObject, originals: collections.deque[bytes]) -> Iterator[MiniBatch]:
        spec = self.spec
        source = obj.key
        with open_object(obj.path, spec.compression, source=source) as stream:
            def records() -> Iterator[bytes]:
                limit = self.params.max_payload_mb * MB  # (a record over it fails the object; known early)
                for number, record in enumerate(read_records(stream, spec.split_type, source=source, limit=limit), 1):
                    if spec.join_source == "Input":
                        originals.append(record)
                    if spec.input_filter not in (None, "$"):
                        assert spec.input_filter is not None
                        with _naming(f"{source}: record {number}"):
                            yield apply_filter(record, spec.content_type or "", spec.input_filter)
                    else:
                        yield record

            yield from mini_batches(records(), split_type=spec.split_type, strategy=self.params.batch_strategy,
                                    max_payload_bytes=self.params.max_payload_mb * MB, source=source)

    def _outputs(self, obj: InputObject, pool: concurrent.futures.Executor) -> Iterator[tuple[bytes, int]]:
        """``(bytes to write, records)`` per mini-batch, in input order, up to N requests in flight."""
        originals: collections.deque[bytes] = collections.deque()
        window: collections.deque[tuple[MiniBatch, list[bytes], concurrent.futures.Future[bytes]]] = \
            collections.deque()
        limit = self.params.max_concurrent_transforms
        try:
            for batch in self._batches(obj, originals):
                if self.stop.is_set():
                    raise Stopped
                inputs = [originals.popleft() for _ in range(batch.count)] if self.spec.join_source == "Input" else []
                what = f"{obj.key}: {_records_label(batch)}"
                window.append((batch, inputs, pool.submit(self.invoker, batch.payload, what)))
                while len(window) >= limit:
                    yield self._finish(obj, *window.popleft())
            while window:
                yield self._finish(obj, *window.popleft())
        finally:
            for _, _, future in window:
                future.cancel()

    def _finish(self, obj: InputObject, batch: MiniBatch, inputs: list[bytes],
                future: concurrent.futures.Future[bytes]) -> tuple[bytes, int]:
        body = future.result()
        spec = self.spec
        if not spec.per_record_output:
            return b"".join(assemble([body], spec.assemble_with)), batch.count
        outputs = split_output(body, spec.split_type, batch.count)
        if outputs is None:
            raise ObjectFailed(f"{obj.key}: {_records_label(batch)}: the response cannot be split into "
                               f"{batch.count} records (one line per record) for JoinSource/OutputFilter")
        accept = spec.accept or spec.content_type or ""
        with _naming(f"{obj.key}: {_records_label(batch)}"):
            if spec.join_source == "Input":
                outputs = [join_input(i, o, spec.content_type or "", accept)
                           for i, o in zip(inputs, outputs, strict=True)]
            if spec.output_filter not in (None, "$"):
                assert spec.output_filter is not None
                outputs = [apply_filter(o, accept, spec.output_filter) for o in outputs]
        return b"".join(assemble(outputs, spec.assemble_with)), batch.count


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    """Prefix a filter's or join's error with the object and record it is about."""
    try:
        yield
    except (TransformError, ConfigError) as e:
        raise TransformError(f"{where}: {e}") from e


def partial_name(name: str, tag: str) -> str:
    """The temporary name an output ``name`` is written under until it is complete: hidden, and marked with
    the job's ``tag``."""
    return f".{name}.{tag}.partial" if tag else f".{name}.partial"


def _discard(partial: Path) -> None:
    with contextlib.suppress(OSError):  # (also where its folder could not be made)
        partial.unlink(missing_ok=True)


def remove_partials(root: Path, tag: str = "") -> None:
    """Remove the temporary output files of the job marked ``tag`` under ``root`` (what a stopped job was
    writing); other jobs' are left alone."""
    if root.is_dir():
        for path in root.rglob(partial_name("*.out", tag)):
            _discard(path)
