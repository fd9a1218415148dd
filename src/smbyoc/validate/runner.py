"""Groups of checks run in worker threads, each with a deadline.

A :class:`Group` runs one group's function (the training checks, the serving checks) in a daemon thread;
the function reports each result through ``record`` as soon as it is known. :func:`wait_for` joins the
threads; a group past its deadline is cancelled (its :class:`~smbyoc.validate.context.Canceller` kills
what it runs, its own ``finally`` blocks remove it) and the checks it did not finish fail with the
reason, so one hung check never hangs the suite. :func:`cancel_all` is the Ctrl-C path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smbyoc.errors import SmbyocError
from smbyoc.validate.context import ValidateContext
from smbyoc.validate.report import CheckResult, failed

log = logging.getLogger(__name__)

#: Extra seconds a group may take beyond the sum of its steps' own limits before it is cancelled, and the
#: time a cancelled group gets to clean up before it is abandoned.
GROUP_SLACK = 60.0


@dataclass
class Group:
    """One group of checks (its names, its function, its time budget) run in a worker thread."""

    name: str
    checks: tuple[str, ...]
    run: Callable[[ValidateContext, Callable[[CheckResult], None]], None]
    budget: float
    ctx: ValidateContext
    results: dict[str, CheckResult] = field(default_factory=dict)
    error: BaseException | None = None
    thread: threading.Thread | None = None
    deadline: float = 0.0
    #: No more results are taken (the deadline passed, or the suite is collecting them).
    timed_out: bool = False
    #: The deadline passed and the group was stopped.
    expired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, result: CheckResult) -> None:
        with self.lock:
            if not self.timed_out:
                self.results[result.name] = result

    def start(self) -> None:
        def work() -> None:
            try:
                self.run(self.ctx, self.record)
            except BaseException as e:  # reported as the failure of the checks it did not reach
                if not isinstance(e, SmbyocError):
                    log.exception("validate: the %s checks stopped", self.name)
                self.error = e

        self.deadline = time.monotonic() + self.budget
        self.thread = threading.Thread(target=work, name=f"validate-{self.name}", daemon=True)
        self.thread.start()

    def finish(self) -> list[CheckResult]:
        with self.lock:
            self.timed_out = True
            results = dict(self.results)
        for name in self.checks:
            if name in results:
                continue
            if self.expired or self.error is None:
                results[name] = failed(name, f"did not finish within {self.budget:g} s: stopped", group=self.name)
            else:
                why = str(self.error).strip().splitlines()[0] if str(self.error).strip() else type(self.error).__name__
                results[name] = failed(name, f"could not run: {why}", group=self.name)
        return list(results.values())


def wait_for(groups: list[Group]) -> None:
    """Join the groups' threads; a group past its deadline is cancelled (its checks then fail)."""
    while True:
        running = [g for g in groups if g.thread is not None and g.thread.is_alive()]
        if not running:
            return
        for group in running:
            if time.monotonic() > group.deadline and not group.ctx.canceller.cancelled.is_set():
                log.warning("validate: the %s checks did not finish within %.0f s: stopping them", group.name,
                            group.budget)
                with group.lock:
                    group.timed_out = group.expired = True  # what it reports from now on is about being stopped
                group.ctx.canceller.cancel()
                group.deadline = time.monotonic() + GROUP_SLACK  # time to clean up
            elif time.monotonic() > group.deadline:
                with group.lock:
                    group.timed_out = True
                group.thread = None  # abandoned: a daemon thread stuck in the engine
                continue
        for group in running:
            if group.thread is not None:
                group.thread.join(0.2)


def cancel_all(groups: list[Group], grace: float = 60.0) -> None:
    for group in groups:
        group.ctx.canceller.cancel()
    end = time.monotonic() + grace
    for group in groups:
        if group.thread is not None:
            group.thread.join(max(0.0, end - time.monotonic()))
