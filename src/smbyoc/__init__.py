"""smbyoc: build, run and test Amazon SageMaker bring-your-own-container images.

Importing this package has no side effects: no environment is read, no directory is created and no
logging is configured. Entry points (``train``, ``serve``, ``smbyoc``) do those things.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smbyoc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
