"""smbyoc: build, run and test Amazon SageMaker bring-your-own-container images.

Importing this package has no side effects: no environment is read, no directory is created and no
logging is configured. Entry points (``train``, ``serve``, ``smbyoc``) do those things.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata on first use: ``importlib.metadata`` costs about
    50 ms to import, which would otherwise be paid by every ``train`` and ``serve`` start (twice for
    ``serve``: once in the supervisor and once in gunicorn)."""
    if name != "__version__":
        raise AttributeError(f"module 'smbyoc' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("smbyoc")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
