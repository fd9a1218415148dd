"""The ``smbyoc`` command: a thin click group; all logic lives in the library.

Each command lives in its own module under ``smbyoc.cli`` and is registered here. Library errors
(:class:`~smbyoc.errors.SmbyocError`) become one clear line and a non-zero exit at this boundary only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from smbyoc import __version__
from smbyoc.errors import SmbyocError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "auto_envvar_prefix": "SMBYOC",
    "max_content_width": 110,
}


def library_errors(func: F) -> F:
    """Turn SmbyocError into a ClickException (one line, exit status from the error)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SmbyocError as e:
            exc = click.ClickException(str(e))
            exc.exit_code = e.exit_code  # type: ignore[misc]
            raise exc from e

    return wrapper  # type: ignore[return-value]


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="smbyoc")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Build, run and test Amazon SageMaker bring-your-own-container images.

    \b
    Example:
      smbyoc local-train --mode process      # train the bundled default example
    """
    from smbyoc.logs import configure_logging

    configure_logging(30 - 10 * verbose if verbose else 20)


#: Command modules, each owned by one part of the product; each exposes ``COMMANDS``.
COMMAND_MODULES = ("train_cmd", "serve_cmd", "transform_cmd", "build_cmd", "env_vars_cmd", "ps_cmd", "capture_cmd",
                   "endpoint_cmd", "push_cmd", "init_cmd", "validate_cmd", "process_cmd", "api_cmd",
                   "logs_cmd", "neo_cmd")


def sweep_before(callback: F) -> F:
    """Run :func:`smbyoc.emulator.sweep.sweep_orphans` before a ``local-*`` command (one line on stderr
    when it removed something; a failing sweep never stops the command)."""
    import functools

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import logging

        from smbyoc.emulator.sweep import summary, sweep_orphans

        try:
            removed = sweep_orphans(docker=kwargs.get("mode") == "docker")
        except (SmbyocError, OSError) as e:
            logging.getLogger(__name__).warning("could not remove what killed emulators left: %s", e)
        else:
            if removed:
                click.echo(summary(removed), err=True)
        return callback(*args, **kwargs)

    wrapper.sweeps = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"smbyoc.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"smbyoc.cli.{name}":
                raise
            continue
        for command in module.COMMANDS:
            if command.name and command.name.startswith("local-") and command.callback is not None \
                    and not getattr(command.callback, "sweeps", False):
                command.callback = sweep_before(command.callback)
            if command.name not in cli.commands:
                cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    _register()
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="smbyoc")
