"""``smbyoc validate IMAGE``: run an image through SageMaker's container contract (:mod:`smbyoc.validate`)."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from types import FrameType

import click

from smbyoc.cli import library_errors
from smbyoc.cli.options import parse_pairs
from smbyoc.errors import ConfigError
from smbyoc.validate.checks import ALL_CHECKS

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3,
          "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}


def parse_size(text: str, option: str = "--max-image-size") -> int:
    """``10GiB``, ``500MB``, ``1.5GB``, ``123456`` (bytes) as a number of bytes; ConfigError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError("expected a size such as 10GiB, 500MB or a number of bytes", key=f"{option} {text}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ConfigError("must be a positive size", key=f"{option} {text}")
    return size


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command("validate")
@click.argument("image")
@click.option("--kind", type=click.Choice(["train", "serve", "both"]), default=None,
              help="What the image does.  [default: from the org.smbyoc.kind label, CMD [\"train\"|\"serve\"], or "
                   "`train`/`serve` on the image's PATH]")
@click.option("--payload", type=click.Path(path_type=Path), metavar="FILE",
              help="Sample request body for POST /invocations (at most 6 MB).  [default: none, so "
                   "serve-invocations is n/a; smbyoc's own images use the bundled example]")
@click.option("--content-type", default="text/csv", help="Content-Type of --payload (and of the oversized body).")
@click.option("--accept", default=None, help="Accept header sent with --payload.")
@click.option("--model-data", type=click.Path(path_type=Path), metavar="PATH",
              help="model.tar.gz or directory served at /opt/ml/model.")
@click.option("-H", "--hyperparameter", "hyperparameter_pairs", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameter of the training jobs (repeatable).")
@click.option("-c", "--channel", "channel_pairs", multiple=True, metavar="NAME=PATH",
              help="Input channel of the training jobs, a local directory (repeatable).")
@click.option("-s", "--source-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Training code mounted at /opt/ml/code (sagemaker_submit_directory).")
@click.option("-e", "--entry-point", metavar="PROGRAM", help="Training program in --source-dir (sagemaker_program).")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment of every container (CreateTrainingJob / CreateModel Environment; repeatable).")
@click.option("--fail-hyperparameter", "fail_pairs", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameters that make train fail, for train-failure.  [default: sagemaker_program and "
                   "SAGEMAKER_PROGRAM name a program that does not exist]")
@click.option("--keep-running-hyperparameter", "keep_running_pairs", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameters that keep train running until stopped, for train-sigterm.")
@click.option("--instance-type", default=None, metavar="TYPE",
              help="Instance type the image must fit (amd64 vs Graviton); the containers get its CPU and memory.")
@click.option("--max-image-size", metavar="SIZE",
              help="Fail image-size above this uncompressed size (e.g. 10GiB, the serverless limit).  [default: no "
                   "limit; SageMaker documents none for training or real-time endpoints]")
@click.option("--startup-timeout", type=float, default=240.0,
              help="Seconds the endpoint has to answer /ping 200 (ContainerStartupHealthCheckTimeoutInSeconds).")
@click.option("--train-stop-timeout", type=float, default=120.0,
              help="Seconds between SIGTERM and SIGKILL for training containers (SageMaker: 120).")
@click.option("--serve-stop-timeout", type=float, default=30.0,
              help="Seconds between SIGTERM and SIGKILL for endpoint containers (SageMaker: 30).")
@click.option("--sigterm-after", type=float, default=1.0,
              help="Seconds after the train-sigterm job's first output line before it is sent SIGTERM.")
@click.option("--timeout", type=float, default=600.0,
              help="Seconds one training job or invocation may take before its check fails.")
@click.option("--skip", multiple=True, type=click.Choice(ALL_CHECKS), metavar="CHECK",
              help=f"Do not run this check (repeatable): {', '.join(ALL_CHECKS)}.")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also write the results as JUnit XML.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Also write the results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the result lines, not the steps.")
@library_errors
def validate(image: str, kind: str | None, payload: Path | None, content_type: str, accept: str | None,
             model_data: Path | None, hyperparameter_pairs: tuple[str, ...], channel_pairs: tuple[str, ...],
             source_dir: Path | None, entry_point: str | None, env_pairs: tuple[str, ...], fail_pairs: tuple[str, ...],
             keep_running_pairs: tuple[str, ...], instance_type: str | None, max_image_size: str | None,
             startup_timeout: float, train_stop_timeout: float, serve_stop_timeout: float, sigterm_after: float,
             timeout: float, skip: tuple[str, ...], junit: Path | None, json_path: Path | None, quiet: bool) -> None:
    """Run IMAGE through SageMaker's container contract: print one line per check (PASS, FAIL, or N/A with the
    reason), optionally write JUnit XML and JSON, and exit 1 when a check fails.

    Checks: what the image does (kind); platform vs instance family; image size; the user it runs as;
    exec-form ENTRYPOINT; secrets in its environment, labels and layer commands. Training images run three
    jobs as SageMaker does (it completes and writes /opt/ml/model, it reads the config files, a failing job
    writes /opt/ml/output/failure, SIGTERM stops it in time). Serving images run as an endpoint (/ping in
    the startup window and within 2 s, /invocations with your payload, a body over 6 MB, SIGTERM, and
    SAGEMAKER_BIND_TO_PORT when the image claims it). Containers, networks and temporary files are removed
    afterwards, also on Ctrl-C.

    \b
    Example:
      smbyoc validate smbyoc/serve:cpu
      smbyoc validate my-model:serve --payload sample.csv --content-type text/csv --junit validate.xml
      smbyoc validate my-algo:train -H epochs=1 -c train=./data --keep-running-hyperparameter epochs=1000
      smbyoc validate my-model:serve --instance-type ml.c7g.xlarge --json validate.json
    """
    from smbyoc.validate import ValidateOptions, validate_image, write_junit, write_report_json
    from smbyoc.validate.report import check_output_path

    for path, option in ((junit, "--junit"), (json_path, "--json")):
        if path is not None:
            check_output_path(path, option)
    options = ValidateOptions(
        model_data=model_data, accept=accept,
        hyperparameters=dict(parse_pairs(hyperparameter_pairs, "--hyperparameter")),
        channels=tuple((name, Path(path)) for name, path in parse_pairs(channel_pairs, "--channel")),
        source_dir=source_dir, entry_point=entry_point, environment=dict(parse_pairs(env_pairs, "--env")),
        fail_hyperparameters=dict(parse_pairs(fail_pairs, "--fail-hyperparameter")) or None,
        keep_running_hyperparameters=dict(parse_pairs(keep_running_pairs, "--keep-running-hyperparameter")) or None,
        startup_timeout=startup_timeout, train_stop_timeout=train_stop_timeout, serve_stop_timeout=serve_stop_timeout,
        sigterm_after=sigterm_after, timeout=timeout,
        max_image_bytes=parse_size(max_image_size) if max_image_size is not None else None, skip=skip,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # The emulator's per-job status lines would drown the suite's own; -vv (debug) keeps them.
    emulator_log = logging.getLogger("smbyoc.emulator")
    emulator_level = emulator_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        emulator_log.setLevel(logging.WARNING)
    try:
        report = validate_image(image, kind=kind, payload=payload, content_type=content_type,
                                instance_type=instance_type, options=options,
                                progress=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    except KeyboardInterrupt:
        click.echo("Interrupted: the containers, networks and files validate started were removed.", err=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        emulator_log.setLevel(emulator_level)
    for line in report.lines():
        click.echo(line)
    if junit is not None:
        write_junit(report, junit)
    if json_path is not None:
        write_report_json(report, json_path)
    if not report.ok:
        raise SystemExit(1)


COMMANDS = [validate]
