"""The ``train`` program: SageMaker's training entry point, compatible with sagemaker-training.

``docker run <image> train`` (what SageMaker and the emulator run) does, in order:

1. configure logging (level from the ``sagemaker_container_log_level`` hyperparameter);
2. read the job (:class:`~smbyoc.training.env.TrainingEnv`) and log it on one line;
3. with ``SAGEMAKER_TRAINING_MODULE=module:function``: check typed hyperparameters, wait for the
   hosts, import the module and call the function (framework images) — nothing else;
4. otherwise copy/extract/download the code into ``/opt/ml/code`` (:mod:`smbyoc.training.code`),
   check typed hyperparameters (``SMBYOC_HYPERPARAMETER_SCHEMA`` or ``hyperparameters.schema.json``
   in the code), wait for the other hosts' names (:mod:`smbyoc.training.distributed`), install
   ``requirements.txt`` / the package, run the program with the ``SM_*`` variables and the
   hyperparameters as arguments (:mod:`smbyoc.training.process`), forwarding SIGTERM/SIGINT;
5. exit 0 → write ``/opt/ml/output/success``; anything else → write ``/opt/ml/output/failure``
   (unless the program wrote one) and exit with the program's status.

Exit statuses: the program's own status, unchanged (128 + n when it died of signal n); otherwise
0 success, 1 ``FAILURE`` (bad configuration or hyperparameters, failed install, unresolved hosts,
an exception in a ``SAGEMAKER_TRAINING_MODULE`` function), 3 ``INTERNAL`` (a bug in smbyoc),
126 ``NOT_EXECUTABLE``, 127 ``NOT_FOUND`` (program or code location), 128 + n when ``train`` itself
was stopped by signal n before the program started.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from smbyoc import exit_codes
from smbyoc.environment_variables import (
    SAGEMAKER_REGION,
    SMBYOC_ALLOW_REQUIREMENTS_INSTALL,
    SMBYOC_HYPERPARAMETER_SCHEMA,
    SMBYOC_LAUNCHER,
)
from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.logs import configure_logging
from smbyoc.paths import Paths
from smbyoc.training.code import (
    NETWORK_ISOLATION_HINT,
    EntryPointType,
    UserProgram,
    code_error,
    install_commands,
    prepare_code,
    program_environment,
)
from smbyoc.training.distributed import TorchDistributedSettings, wait_for_hosts
from smbyoc.training.env import TrainingEnv
from smbyoc.training.failure import format_failure, write_failure, write_success
from smbyoc.training.process import ProcessResult, run_program

log = logging.getLogger("smbyoc.training")

SCHEMA_FILE = "hyperparameters.schema.json"
USAGE = "usage: train\n\nRuns the SageMaker training job described by $SAGEMAKER_BASE_DIR (default /opt/ml).\n"


class _Stopped(BaseException):
    """``train`` received SIGTERM/SIGINT while no program was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Failed(SmbyocError):
    """A step failed; carries the failure text's parts."""

    def __init__(self, error_type: str, message: str, exit_code: int, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``train`` console script."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the training job; returns the exit status (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(USAGE + (__doc__ or ""))
        return exit_codes.OK
    # SageMaker appends "train" after the image; with ENTRYPOINT ["train"] we see it as an argument.
    extra = [a for a in args if a != "train"]
    configure_logging(logging.INFO)
    if extra:
        log.warning("ignoring arguments %s", extra)
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    paths = Paths.from_env(env_map)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal() works only there
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(paths, env_map)
    except _Stopped as e:
        name = signal.Signals(e.signum).name
        _report(paths, "Stopped", f"train received {name} before the program finished starting", "")
        return exit_codes.from_signal(e.signum)
    except _Failed as e:
        _report(paths, e.error_type, e.message, e.stderr_tail)
        return e.exit_code
    except SmbyocError as e:
        _report(paths, type(e).__name__, e.message, "")
        return e.exit_code
    except Exception as e:
        _report(paths, "FrameworkError", f"{type(e).__name__}: {e}", traceback.format_exc())
        return exit_codes.INTERNAL
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(paths: Paths, error_type: str, message: str, stderr_tail: str) -> None:
    text = format_failure(error_type, message, stderr_tail)
    log.error("Reporting training FAILURE: %s", text.split("\n", 1)[0])
    try:
        write_failure(paths, text)
    except OSError as e:
        log.error("cannot write %s: %s", paths.failure_file, e)


def _train(paths: Paths, environ: Mapping[str, str]) -> int:
    env = TrainingEnv.from_env(environ, paths.base_dir)
    logging.getLogger().setLevel(env.log_level)
    log.info("training environment: %s", json.dumps(env.to_dict(), sort_keys=True, default=str))

    if env.framework_module:
        check_hyperparameters(env, paths.code_dir, environ)
        wait_for_hosts(env.hosts, environ=environ)
        status = call_training_module(env.framework_module)
    else:
        region = env.sagemaker_hyperparameters.get("sagemaker_region") or SAGEMAKER_REGION.get(environ)
        code_dir = prepare_code(env.module_dir, paths.code_dir, region=str(region) if region else None)
        check_hyperparameters(env, code_dir, environ)
        wait_for_hosts(env.hosts, environ=environ)
        status = run_user_program(env, code_dir, environ)
    if status == 0:
        write_success(paths)
        log.info("Reporting training SUCCESS")
    return status


def check_hyperparameters(env: TrainingEnv, code_dir: Path, environ: Mapping[str, str]) -> None:
    """Check the hyperparameters against a schema when one is declared; HyperparameterError otherwise."""
    configured = SMBYOC_HYPERPARAMETER_SCHEMA.get(environ)
    path = Path(configured) if configured else code_dir / SCHEMA_FILE
    if not configured and not path.is_file():
        return
    from smbyoc.hyperparameter_schema import coerce, load_schema

    coerce(load_schema(path), env.hyperparameters_raw)
    log.info("hyperparameters match %s", path)


def call_training_module(spec: str) -> int:
    """Import ``module`` of ``module:function`` and call the function (SAGEMAKER_TRAINING_MODULE)."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"{spec!r} is not of the form module:function", key="SAGEMAKER_TRAINING_MODULE")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise code_error(f"SAGEMAKER_TRAINING_MODULE {spec!r}: cannot import {module_name!r}: {e}",
                         exit_codes.NOT_FOUND) from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise code_error(f"SAGEMAKER_TRAINING_MODULE {spec!r}: module {module_name!r} has no function "
                         f"{function_name!r}", exit_codes.NOT_FOUND)
    log.info("calling %s", spec)
    try:
        function()
    except SystemExit as e:
        if e.code is None or e.code == 0:
            return exit_codes.OK
        if isinstance(e.code, int):
            raise _Failed("ExecuteUserScriptError", f"{spec} exited with status {e.code}", e.code) from e
        raise _Failed("ExecuteUserScriptError", str(e.code), exit_codes.FAILURE) from e
    except Exception as e:
        raise _Failed(type(e).__name__, f"{e}\n(raised by {spec})", exit_codes.FAILURE,
                      traceback.format_exc()) from e
    return exit_codes.OK


def program_argv(
    env: TrainingEnv, program: UserProgram, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv for the program and extra environment (torchrun when ``SMBYOC_LAUNCHER=torchrun``)."""
    args = env.to_cmd_args()
    if SMBYOC_LAUNCHER.get(environ) != "torchrun":
        return program.command(args), {}
    if program.kind is not EntryPointType.PYTHON_PROGRAM:
        log.warning("SMBYOC_LAUNCHER=torchrun applies to .py programs only; running %s directly", program.name)
        return program.command(args), {}
    if importlib.util.find_spec("torch") is None:
        raise code_error("SMBYOC_LAUNCHER=torchrun needs PyTorch in the image (python -m torch.distributed.run)")
    settings = TorchDistributedSettings.from_training_env(env, environ=environ)
    log.info("launching with torchrun: %s", settings)
    return settings.torchrun_argv(program.name, args), settings.to_env()


def run_user_program(env: TrainingEnv, code_dir: Path, environ: Mapping[str, str]) -> int:
    """Install what the code needs, run the program, write the failure file if it fails."""
    program = UserProgram.resolve(env.user_entry_point, code_dir)
    for directory in (env.paths.model_dir, env.paths.output_data_dir):
        try:  # SageMaker creates them; do the same when running outside it
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("cannot create %s: %s", directory, e)
    child_env = program_environment(environ, env.to_env_vars(), code_dir)
    for command in install_commands(program, allow=SMBYOC_ALLOW_REQUIREMENTS_INSTALL.get(environ)):
        log.info("installing: %s", " ".join(command))
        result = _start(command, code_dir, child_env, "pip")
        if not result.ok and result.forwarded_signals:  # stopped while installing: a stop, not a network problem
            raise _Stopped(result.forwarded_signals[0])
        if not result.ok:
            raise _Failed("InstallRequirementsError",
                          f"{' '.join(command[1:])} failed with exit status {result.exit_status}; "
                          f"{NETWORK_ISOLATION_HINT}", exit_codes.FAILURE, result.stderr_tail)
    argv, extra_env = program_argv(env, program, environ)
    log.info("running: %s", " ".join(argv))
    result = _start(argv, code_dir, {**child_env, **extra_env}, program.name)
    if not result.ok:
        error_type, message = describe_failure(program.name, result)
        _report(env.paths, error_type, message, result.stderr_tail)
    return result.exit_status


def _start(argv: list[str], cwd: Path, env: dict[str, str], name: str) -> ProcessResult:
    try:
        return run_program(argv, cwd=cwd, env=env)
    except PermissionError as e:
        raise code_error(f"cannot execute {name}: {e.strerror} ({argv[0]})", exit_codes.NOT_EXECUTABLE) from e
    except FileNotFoundError as e:
        raise code_error(f"cannot execute {name}: {argv[0]} not found", exit_codes.NOT_FOUND) from e
    except OSError as e:
        raise code_error(f"cannot execute {name}: {e}", exit_codes.NOT_EXECUTABLE) from e


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")


def last_exception(stderr: str) -> tuple[str, str] | None:
    """``(type, message)`` of the last Python traceback in ``stderr``, if any."""
    marker = stderr.rfind("Traceback (most recent call last):")
    if marker < 0:
        return None
    lines = stderr[marker:].splitlines()[1:]
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and (i + 1 == len(lines) or not lines[i + 1].startswith(" ")):
            match = _EXCEPTION_LINE.match(line)
            if match and not any(later.startswith("  File ") for later in lines[i + 1:]):
                return match.group(1).rsplit(".", 1)[-1], (match.group(2) or "").strip()
    return None


def describe_failure(name: str, result: ProcessResult) -> tuple[str, str]:
    """Error type and message for a failed program (its exception when stderr shows a traceback)."""
    command = " ".join(result.argv)
    if len(command) > 200:
        command = command[:197] + "..."
    if result.signal_number is not None:
        signame = signal.Signals(result.signal_number).name
        status = f"{name} was killed by {signame} (exit status {result.exit_status})"
        if result.signal_number == signal.SIGKILL and signal.SIGKILL not in result.forwarded_signals:
            status += "; out of memory? the kernel's OOM killer sends SIGKILL"
    else:
        status = f"{name} exited with status {result.exit_status}"
    status += f"; command: {command}"
    found = last_exception(result.stderr_tail)
    if found:
        return found[0], f"{found[1]}\n{status}"
    return "ExecuteUserScriptError", status

