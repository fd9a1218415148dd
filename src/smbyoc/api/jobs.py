"""What the API server's job kinds (training, processing, transform) share.

A :class:`JobKind` describes one kind: where its jobs are stored, the names of its members (``<Noun>Name``,
``<Noun>Status``, ...), its ARN resource and the words its messages use. :class:`Jobs` holds the operations that
are the same for every kind: Create's skeleton (the duplicate check under the lock, the stored description, the
job's thread), Describe, Stop, List, the restart's recovery and the server's shutdown. A kind keeps what is its own:
how a request becomes a description (:meth:`Jobs._prepare`) and how the job runs (:meth:`Jobs._execute`).

A missing job is a ``ValidationException`` for Describe (what botocore's waiters expect) and ``ResourceNotFound``
for Stop (its modelled error).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import ApiError, not_found, validation
from smbyoc.api.timestamps import now, time_filtered
from smbyoc.errors import SmbyocError

log = logging.getLogger(__name__)

ACCOUNT = "000000000000"
#: The statuses of a job that is still running.
ACTIVE = ("InProgress", "Stopping")
DIED_REASON = ("InternalServerError: the smbyoc api server stopped while the job was running; the job's processes "
               "and containers were ended with it")


def arn(region: str, resource: str, name: str) -> str:
    """``arn:aws:sagemaker:<region>:<account>:<resource>/<name, lower case>``."""
    return f"arn:aws:sagemaker:{region}:{ACCOUNT}:{resource}/{name.lower()}"


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as the API names it."""

    #: The store's collection (:mod:`smbyoc.api.store`).
    collection: str
    #: The members' stem: ``TrainingJob`` gives ``TrainingJobName``, ``TrainingJobStatus``, ``TrainingJobArn``,
    #: ``TrainingJobSummaries``.
    noun: str
    #: The ARN's resource word (``training-job``), also the stem of the job's log file.
    resource: str
    #: The kind in messages (``training job``).
    words: str
    #: The end time member (``TrainingEndTime``).
    end_time_key: str
    #: The members of a List operation's summaries.
    summary_keys: tuple[str, ...]
    #: The message of a job not found (``{name}``: the name asked for).
    missing_message: str = "Could not find requested job with name {name}"
    #: The member that follows the status through Failed and Stopping (``SecondaryStatus``), if any.
    secondary_status_key: str | None = None

    @property
    def name_key(self) -> str:
        return f"{self.noun}Name"

    @property
    def status_key(self) -> str:
        return f"{self.noun}Status"

    @property
    def arn_key(self) -> str:
        return f"{self.noun}Arn"

    @property
    def summaries_key(self) -> str:
        return f"{self.noun}Summaries"

    @property
    def sort_keys(self) -> dict[str, str]:
        """List's ``SortBy`` values and the members they sort on."""
        return {"Name": self.name_key, "CreationTime": "CreationTime", "Status": self.status_key}

    @property
    def exists_message(self) -> str:
        """CreateX's ``ResourceInUse`` message (``{arn}``: the job's)."""
        return (f"{self.words.capitalize()} names must be unique within an AWS account and region, and a "
                f"{self.words} with this name already exists ({{arn}})")

    def status(self, status: str) -> dict[str, Any]:
        """The status member (and the secondary one, if the kind has one) set to ``status``."""
        fields = {self.status_key: status}
        if self.secondary_status_key is not None:
            fields[self.secondary_status_key] = status
        return fields


@dataclass
class _Run:
    thread: threading.Thread | None = None
    backend: Any = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Resources:
    """Where a server's resources of some kinds live and run: the store, the mode, the region, S3, the logs."""

    def __init__(self, store: stores.Store, *, mode: str, region: str, s3_endpoint_url: str | None,
                 logs_dir: Path) -> None:
        self.store = store
        self.mode = mode
        self.region = region
        self.s3_endpoint_url = s3_endpoint_url
        self.logs_dir = logs_dir

    def _log_sink(self, stem: str) -> Callable[[str], None]:
        """Writes lines to ``<logs dir>/<stem>.log`` (one thread at a time)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        path = self.logs_dir / f"{stem}.log"
        lock = threading.Lock()

        def sink(line: str) -> None:
            with lock, path.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
        return sink


class Jobs(Resources):
    """The jobs of one kind of one server; a subclass sets ``kind`` and says how a job is prepared and run."""

    kind: JobKind

    def __init__(self, store: stores.Store, *, mode: str, region: str, s3_endpoint_url: str | None,
                 logs_dir: Path, stop_timeout: float = 120.0) -> None:
        super().__init__(store, mode=mode, region=region, s3_endpoint_url=s3_endpoint_url, logs_dir=logs_dir)
        self.stop_timeout = stop_timeout
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()

    def arn(self, name: str) -> str:
        return arn(self.region, self.kind.resource, name)

    def recover(self) -> None:
        """Jobs stored as running belong to a server that died: described Failed from now on."""
        kind = self.kind
        for item in self.store.all(kind.collection):
            if item.get(kind.status_key) in ACTIVE:
                stamp = now()
                self.store.update(kind.collection, item[kind.name_key], **kind.status("Failed"),
                                  FailureReason=DIED_REASON, **{kind.end_time_key: stamp}, LastModifiedTime=stamp)

    # ------------------------------------------------------------------------------------------- operations
    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = self.kind
        name = request[kind.name_key]
        description, context = self._prepare(request)
        run = _Run()
        with self.lock:
            if self.store.find(kind.collection, name, case_insensitive=True) is not None:
                raise ApiError("ResourceInUse", kind.exists_message.format(arn=self.arn(name)))
            self.store.put(kind.collection, name, {**description, "_Request": request})
            self.runs[name] = run
        run.thread = threading.Thread(target=self._run, args=(name, request, context, run),
                                      name=f"{kind.resource.removesuffix('-job')}-{name}", daemon=True)
        run.thread.start()
        return {kind.arn_key: self.arn(name)}

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request[self.kind.name_key], validation)
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = self.kind
        item = self._item(request[kind.name_key], not_found)
        name, status = item[kind.name_key], item[kind.status_key]
        if status == "Stopping":
            return {}
        run = self.runs.get(name)
        if status != "InProgress" or run is None:
            raise validation(f"The request was rejected because the {kind.words} is in status {status}.")
        self.store.update(kind.collection, name, **kind.status("Stopping"), LastModifiedTime=now())
        self._stop(run)
        return {}

    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = self.kind
        items = self.store.all(kind.collection)
        if "StatusEquals" in request:
            items = [i for i in items if i[kind.status_key] == request["StatusEquals"]]
        if "NameContains" in request:
            items = [i for i in items if request["NameContains"].lower() in i[kind.name_key].lower()]
        items = time_filtered(items, request)
        summaries = [{k: i[k] for k in kind.summary_keys if k in i} for i in items]
        return page(summaries, request, kind.summaries_key, kind.sort_keys)

    def shutdown(self) -> None:
        """Stop every running job (as StopX does) and wait for them to end."""
        for name, run in list(self.runs.items()):
            if run.thread is None or run.thread.is_alive():
                log.info("stopping %s %s", self.kind.words, name)
                self._stop(run)
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join()

    # ------------------------------------------------------------------------------------------- a kind's own
    def _prepare(self, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The request checked (:class:`ApiError` when refused): the job's first description and what
        :meth:`_execute` needs besides the request."""
        raise NotImplementedError

    def _execute(self, name: str, request: dict[str, Any], context: Any, run: _Run, staging: Any) -> dict[str, Any]:
        """Run the job (``run.backend`` set as soon as it can be stopped); the fields its end sets."""
        raise NotImplementedError

    def _finished(self, name: str, fields: dict[str, Any], stamp: float) -> dict[str, Any]:
        """The fields stored when the job ends (``stamp``), from what :meth:`_execute` (or its failure) gave."""
        return fields

    def _stop(self, run: _Run) -> None:
        """Ask the job to stop: the flag its thread checks, then its backend's ``stop()``."""
        with run.lock:
            run.stop_requested.set()
            backend = run.backend
        if backend is not None:
            backend.stop()

    # ------------------------------------------------------------------------------------------- helpers
    def _new_description(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request (without its tags) as a new job's description, ``InProgress``."""
        stamp = now()
        description = {k: v for k, v in request.items() if k != "Tags"}
        description.update({self.kind.arn_key: self.arn(name=request[self.kind.name_key]),
                            self.kind.status_key: "InProgress", "CreationTime": stamp, "LastModifiedTime": stamp})
        return description

    def _item(self, name: str, error: Callable[[str], ApiError]) -> dict[str, Any]:
        """The stored job (the name's case ignored); missing: ``error`` with the kind's message."""
        stored = self.store.find(self.kind.collection, name, case_insensitive=True)
        item = self.store.get(self.kind.collection, stored) if stored is not None else None
        if item is None:
            raise error(self.kind.missing_message.format(name=name))
        return item

    def _sink(self, name: str) -> Callable[[str, str], None]:
        """The job's log (``<logs dir>/<resource>-<name>.log``), a line ``[host] line`` per ``(host, line)``, as
        ``local-train`` prints them (``smbyoc logs`` reads it)."""
        from smbyoc.emulator.job_logs import host_line

        write = self._log_sink(f"{self.kind.resource}-{name}")

        def sink(host: str, line: str) -> None:
            write(host_line(host, line))
        return sink

    def _run(self, name: str, request: dict[str, Any], context: Any, run: _Run) -> None:
        from smbyoc.s3.staging import Staging

        kind = self.kind
        try:
            with Staging(endpoint_url=self.s3_endpoint_url, progress=lambda line: log.info("%s: %s", name, line)) \
                    as staging:
                fields = self._execute(name, request, context, run, staging)
        except (SmbyocError, OSError) as e:
            log.info("%s %s failed: %s", kind.words, name, e)
            fields = {**kind.status("Failed"), "FailureReason": f"ClientError: {e}"}
        except Exception as e:
            log.exception("%s %s", kind.words, name)
            fields = {**kind.status("Failed"), "FailureReason": f"InternalServerError: {type(e).__name__}: {e}"}
        stamp = now()
        fields.setdefault(kind.end_time_key, stamp)
        self.store.update(kind.collection, name, **self._finished(name, fields, stamp), LastModifiedTime=stamp)
        with self.lock:
            self.runs.pop(name, None)


def page(items: list[dict[str, Any]], request: dict[str, Any], key: str, sort_keys: dict[str, str]) -> dict[str, Any]:
    """One page of a List operation: ``SortBy`` / ``SortOrder`` (default CreationTime, Descending),
    ``MaxResults`` (default 10) and ``NextToken`` (the position of the next item, as text)."""
    sort_key = sort_keys.get(request.get("SortBy", "CreationTime"), "CreationTime")
    items = sorted(items, key=lambda i: (i.get(sort_key) is None, i.get(sort_key)),
                   reverse=request.get("SortOrder", "Descending") == "Descending")
    try:
        start = int(request.get("NextToken") or 0)
        if start < 0:
            raise ValueError
    except ValueError:
        raise validation("Invalid pagination token") from None
    size = request.get("MaxResults", 10)
    answer: dict[str, Any] = {key: items[start:start + size]}
    if start + size < len(items):
        answer["NextToken"] = str(start + size)
    return answer
