"""Process mode: run the ``train`` program as a local subprocess with ``SAGEMAKER_BASE_DIR`` set.

No Docker is needed, and a debugger or ``breakpoint()`` works because the program shares the terminal. Given
a ``sink(host, line)`` (the job's log file), the program's standard output and error go through pipes instead:
each line to the sink and, with ``echo``, every chunk on to this process's own descriptors 1 and 2 as it comes
(a prompt without a newline shows at once; ``PYTHONUNBUFFERED=1`` is set unless the job sets it).
One host only (several hosts need their own network names: use Docker mode).

Every process of the job (``train``, the program, whatever it starts) carries the job's token in
``SMBYOC_OWNER_TOKEN``, recorded with the ``train`` process in the job's record. When ``train`` exits,
processes still carrying the token are ended (SIGTERM, then SIGKILL after :data:`LEFTOVER_GRACE` s), as the
end of a SageMaker container ends them; the SIGKILL fallback of a stop reaches all of them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from smbyoc import exit_codes
from smbyoc.emulator import jobs, owners
from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.layout import HostTree
from smbyoc.emulator.programs import describe_program
from smbyoc.emulator.result import HostOutcome
from smbyoc.errors import ConfigError, UserCodeError

log = logging.getLogger(__name__)

#: Variables from the caller's environment that would leak another job's settings into this one.
_LEAKY_PREFIXES = ("SM_", "SAGEMAKER_", "TRAINING_JOB_")
#: Seconds processes left behind by a finished ``train`` get between SIGTERM and SIGKILL.
LEFTOVER_GRACE = 2.0


def default_train_command() -> list[str]:
    """smbyoc's own ``train`` runtime, in the current interpreter."""
    return [sys.executable, "-m", "smbyoc.training"]


def job_environment(
    spec: TrainingJobSpec, tree: HostTree, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the program sees: the caller's, minus SageMaker variables, plus the job's."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(_LEAKY_PREFIXES)}
    env.update(
        {
            "SAGEMAKER_BASE_DIR": str(tree.root),
            "TRAINING_JOB_NAME": spec.job_name,
            "TRAINING_JOB_ARN": spec.job_arn,
        }
    )
    env.update(spec.environment)
    return env


@dataclass
class ProcessBackend:
    command: Sequence[str] = field(default_factory=default_train_command)
    stop_timeout: float = 120.0
    name: str = "process"
    #: ``sink(host, line)`` for each line the program prints (None: it shares the terminal).
    sink: Callable[[str, str], None] | None = None
    #: With a sink: also pass the output on to descriptors 1 and 2, as it comes.
    echo: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _timer: threading.Timer | None = field(default=None, init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)
    #: Set once the program runs (the job's lifecycle timers count from here).
    started: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def preflight(self, spec: TrainingJobSpec) -> None:
        """What process mode cannot emulate, and a ``train`` program given by path that is not there, are
        refused before anything starts."""
        if spec.instance_count != 1:
            raise ConfigError("process mode runs a single host; use --mode docker for several",
                              key=f"--instance-count {spec.instance_count}")
        if spec.network_isolation:
            raise ConfigError("a local process cannot be cut off the network; use --mode docker",
                              key="--network-isolation")
        if spec.gpus is not None:
            raise ConfigError("only for --mode docker (a local process sees the machine's GPUs)", key="--gpus")
        first = Path(self.command[0]) if self.command else None
        if first is not None and first.parent != Path() and not first.exists():
            raise ConfigError("no such file", key=f"--train-command {self.command[0]}")

    def run(self, spec: TrainingJobSpec, trees: Sequence[HostTree]) -> list[HostOutcome]:
        """Run the job's containers (processes) to their end. A :meth:`stop` made before it starts (Ctrl-C as the
        job starts) is kept: nothing runs, or the program is stopped at once; the flag is cleared at the end
        (a spot restart runs again on the same backend)."""
        try:
            return self._run(spec, trees)
        finally:
            self._stopping.clear()

    def _run(self, spec: TrainingJobSpec, trees: Sequence[HostTree]) -> list[HostOutcome]:
        self.started.clear()
        tree = trees[0]
        argv = list(self.command)
        log.info("running %s (%s) with SAGEMAKER_BASE_DIR=%s", " ".join(argv), describe_program(argv), tree.root)
        self._token = owners.new_token()
        jobs.update(jobs.TRAINING, spec.job_name, token=self._token)  # recorded before any process exists
        env = {**job_environment(spec, tree), owners.TOKEN_VARIABLE: self._token}
        piped = self.sink is not None
        if piped:
            env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            # A session of its own: Ctrl-C reaches the emulator, which stops the job as
            # StopTrainingJob does (SIGTERM to the program) instead of interrupting it twice.
            self._process = subprocess.Popen(argv, env=env, start_new_session=True,
                                             stdout=subprocess.PIPE if piped else None,
                                             stderr=subprocess.PIPE if piped else None)
        except FileNotFoundError as e:
            raise UserCodeError(f"train command not found: {argv[0]}") from e
        except PermissionError as e:
            raise UserCodeError(f"train command is not executable: {argv[0]}") from e
        pid = self._process.pid
        pumps = [self._pump(stream, tree.host, fd) for stream, fd in ((self._process.stdout, 1),
                                                                       (self._process.stderr, 2))
                 if stream is not None]
        jobs.update(jobs.TRAINING, spec.job_name, child=owners.Owner.of(pid).to_dict())
        self.started.set()
        if self._stopping.is_set():
            self.stop()
        try:
            returncode = self._wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            left = owners.end_processes(self._token, grace=LEFTOVER_GRACE)
            if left:
                log.warning("ended %d process(es) train left running (%s): SIGTERM, then SIGKILL after %g s",
                            len(left), ", ".join(map(str, left)), LEFTOVER_GRACE)
            for pump in pumps:
                pump.join(LEFTOVER_GRACE)
        return [HostOutcome(tree.host, exit_codes.from_returncode(returncode))]

    def _pump(self, stream: IO[bytes], host: str, fd: int) -> threading.Thread:
        """Pass the program's output on from a pipe, in a daemon thread: lines to the sink, chunks echoed."""
        sink, echo = self.sink, self.echo
        assert sink is not None
        source = stream.fileno()

        def pump() -> None:
            partial = b""
            try:
                while chunk := os.read(source, 65536):
                    if echo:
                        with contextlib.suppress(OSError):
                            os.write(fd, chunk)
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        sink(host, line.decode("utf-8", "replace").rstrip("\r"))
                if partial:
                    sink(host, partial.decode("utf-8", "replace"))
            except OSError as e:
                log.debug("output of %s ended: %s", host, e)
            finally:
                with contextlib.suppress(OSError):
                    stream.close()

        thread = threading.Thread(target=pump, name=f"output-{host}-{fd}", daemon=True)
        thread.start()
        return thread

    def _wait(self) -> int:
        assert self._process is not None
        while True:
            try:
                return self._process.wait()
            except KeyboardInterrupt:  # pragma: no cover - only without the signal handler
                self.stop()

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        self._timer = threading.Timer(self.stop_timeout, self.kill)
        self._timer.daemon = True
        self._timer.start()

    def kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        log.warning("killing the training processes (SIGKILL)")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # The program runs in a process group of its own (train forwards signals to it) and may have
        # started others: everything that carries the job's token goes too.
        owners.end_processes(self._token, term=False)
