"""Exit statuses used by smbyoc programs, named in one place.

The user program's own exit status is always propagated unchanged by ``train``; these are the statuses
smbyoc itself chooses.
"""

from __future__ import annotations

#: Success.
OK = 0
#: The job failed: a user error, a failing program, or bad configuration (SageMaker toolkits use 1).
FAILURE = 1
#: Command-line usage error (click's convention).
USAGE = 2
#: An internal error in smbyoc itself (a "Framework Error" in the training toolkit's words).
INTERNAL = 3
#: The program named by ``SAGEMAKER_PROGRAM``/``sagemaker_program`` exists but cannot be executed (POSIX).
NOT_EXECUTABLE = 126
#: The program named by ``SAGEMAKER_PROGRAM``/``sagemaker_program`` was not found (POSIX).
NOT_FOUND = 127
#: Base added to a signal number when a process ends by that signal (shell convention: 128 + n).
SIGNAL_BASE = 128


def from_signal(signum: int) -> int:
    """Exit status for a process killed by ``signum`` (e.g. SIGTERM → 143, SIGKILL → 137)."""
    return SIGNAL_BASE + signum


def from_returncode(returncode: int) -> int:
    """Map a :class:`subprocess.Popen` return code (negative for signals) to an exit status."""
    return from_signal(-returncode) if returncode < 0 else returncode

#: An emulated job was stopped (Ctrl-C / StopTrainingJob) before it finished (shell convention for SIGINT).
STOPPED = 130
