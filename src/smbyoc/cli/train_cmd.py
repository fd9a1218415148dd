"""``smbyoc local-train``: run a training job exactly as SageMaker would, locally."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from smbyoc import exit_codes
from smbyoc.cli import library_errors
from smbyoc.cli.options import parse_pairs
from smbyoc.emulator.job_spec import (
    INPUT_MODES,
    SDK_PROGRAM_KEY,
    SDK_SUBMIT_DIR_KEY,
    ChannelSpec,
    TrainingJobSpec,
    build_hyperparameters,
    default_job_name,
    load_hyperparameters_argument,
)
from smbyoc.emulator.result import TrainingJobResult
from smbyoc.emulator.training_job import TrainingBackend
from smbyoc.errors import ConfigError


def _channels(
    channel_pairs: list[tuple[str, str]],
    content_types: dict[str, str],
    input_modes: dict[str, str],
    job_input_mode: str,
) -> tuple[ChannelSpec, ...]:
    names = [name for name, _ in channel_pairs]
    for option, mapping in (("--content-type", content_types), ("--input-mode", input_modes)):
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise ConfigError(f"no such channel (channels: {', '.join(names) or 'none'})",
                              key=f"{option} {unknown[0]}")
    return tuple(
        ChannelSpec(
            name=name,
            source=Path(path).expanduser(),
            input_mode=input_modes.get(name, job_input_mode),
            content_type=content_types.get(name),
        )
        for name, path in channel_pairs
    )


def _split_input_modes(values: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    job_mode = "File"
    per_channel: dict[str, str] = {}
    for value in values:
        if "=" in value:
            name, mode = value.split("=", 1)
            per_channel[name] = mode
        else:
            job_mode = value
    for where, mode in [("job", job_mode), *per_channel.items()]:
        if mode not in INPUT_MODES:
            raise ConfigError(f"expected one of {', '.join(INPUT_MODES)}", key=f"--input-mode {where}={mode}")
    return job_mode, per_channel


def echo_result(result: TrainingJobResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.describe(), indent=2))
        return
    colour = "green" if result.succeeded else "red"
    click.secho(f"Training job {result.job_name}: {result.status} "
                f"({result.training_seconds:.1f} s, exit status {result.exit_code})", fg=colour, bold=True,
                err=True)
    if result.failure_reason:
        click.echo("FailureReason: " + result.failure_reason.rstrip(), err=True)
    if result.artifacts is not None:
        for artifact in (result.artifacts.model, result.artifacts.output):
            click.echo(f"  {artifact.path}  ({artifact.size:,} bytes)")
        for clash in result.artifacts.clashes:
            click.echo(f"  warning: name clash: {clash}", err=True)


@click.command("local-train")
@click.option("--mode", type=click.Choice(["docker", "process"]), default="docker",
              help="process: run `train` as a local process (no Docker; debuggers work); "
                   "docker: run the image as SageMaker does.")
@click.option("--image", metavar="IMAGE", help="Training image (docker mode).")
@click.option("-e", "--entry-point", metavar="PROGRAM",
              help="Program in --source-dir to run (sets the sagemaker_program hyperparameter).")
@click.option("-s", "--source-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Directory, file:// URI or .tar.gz with the user code (sagemaker_submit_directory).")
@click.option("--train-command", metavar="CMD",
              help="Process mode: the program run as `train` (default: smbyoc's runtime). Use it to run "
                   "your own `train` executable.")
@click.option("-c", "--channel", "channels", multiple=True, metavar="NAME=PATH",
              help="Input channel: a directory or file copied into /opt/ml/input/data/NAME. Repeatable.")
@click.option("--content-type", "content_types", multiple=True, metavar="NAME=TYPE",
              help="ContentType of a channel in inputdataconfig.json. Repeatable.")
@click.option("--input-mode", "input_modes", multiple=True, metavar="MODE|NAME=MODE",
              help="TrainingInputMode for the job or one channel: File, FastFile or Pipe. Repeatable.")
@click.option("--hyperparameters", "hyperparameters_json", metavar="JSON|@FILE",
              help="Hyperparameters as a JSON object, or @file holding one.")
@click.option("-H", "--hyperparameter", "hyperparameter_pairs", multiple=True, metavar="KEY=VALUE",
              help="One hyperparameter (wins over --hyperparameters). Repeatable.")
@click.option("--json-encode-hyperparameters/--plain-hyperparameters", default=False,
              help="Encode values as the SDK's framework estimators do (json.dumps: \"adam\" -> '\"adam\"') "
                   "instead of str() like the generic Estimator.")
@click.option("--job-name", metavar="NAME", help="Training job name (generated when absent).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("smbyoc-output"),
              help="Artifacts go to OUTPUT_DIR/JOB_NAME/output/{model,output}.tar.gz.")
@click.option("--instance-type", default="local", metavar="TYPE",
              help="ML instance type (current_instance_type; CPU/memory limits in docker mode).")
@click.option("--instance-count", type=int, default=1, help="Number of hosts (docker mode for more than 1).")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable for the container (CreateTrainingJob Environment). Repeatable.")
@click.option("--region", default="us-east-1", help="Region used in the job ARN.")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=120.0,
              help="Seconds between SIGTERM and SIGKILL when the job is stopped.")
@click.option("--user", metavar="UID[:GID]",
              help="Docker mode: run the container as this user instead of the image's (root, as SageMaker).")
@click.option("--keep-tree", is_flag=True, help="Keep the job's /opt/ml tree for inspection.")
@click.option("--json", "as_json", is_flag=True, help="Print a DescribeTrainingJob-shaped JSON result.")
@library_errors
def local_train(
    mode: str, image: str | None, entry_point: str | None, source_dir: Path | None,
    train_command: str | None, channels: tuple[str, ...], content_types: tuple[str, ...],
    input_modes: tuple[str, ...], hyperparameters_json: str | None, hyperparameter_pairs: tuple[str, ...],
    json_encode_hyperparameters: bool, job_name: str | None, output_dir: Path, instance_type: str,
    instance_count: int, env_pairs: tuple[str, ...], region: str, stop_timeout: float, user: str | None,
    keep_tree: bool, as_json: bool,
) -> None:
    """Run a training job as SageMaker would and write its model.tar.gz and output.tar.gz.

    With no program and no image, trains the bundled default example (a small PyTorch model on a
    dataset shipped with smbyoc).

    \b
    Examples:
      smbyoc local-train                      # default example in the default train image
      smbyoc local-train --image my-algo:latest -c train=./data --instance-type ml.m5.large
      smbyoc local-train --mode process -e train.py -s ./src -c train=./data -H epochs=3
      smbyoc local-train --mode process --train-command ./train -c train=./data --job-name my-job
    """
    from smbyoc.emulator.training_job import run_training_job

    base_hps: dict[str, object] = load_hyperparameters_argument(hyperparameters_json) if hyperparameters_json else {}
    hp_pairs = parse_pairs(hyperparameter_pairs, "-H")
    channel_pairs = parse_pairs(channels, "--channel")
    use_default = entry_point is None and train_command is None and image is None
    if train_command is not None and mode == "docker":
        raise ConfigError("only for --mode process (in docker mode the image's `train` runs)",
                          key="--train-command")
    if use_default:
        from smbyoc.examples import default_example

        example = default_example()
        entry_point = example.entry_point
        source_dir = source_dir or example.source_dir
        if not channel_pairs:
            channel_pairs = [(name, str(path)) for name, path in example.channels.items()]
        base_hps = {**example.hyperparameters, **base_hps}
    if entry_point is not None and source_dir is None:
        source_dir = Path(".")
    hyperparameters = build_hyperparameters(base_hps, hp_pairs, json_encode=json_encode_hyperparameters)
    if entry_point is not None:
        # The SDK always JSON-encodes its own script-mode keys. In docker mode the code is mounted at
        # /opt/ml/code (as SDK local mode does), in process mode the runtime copies it there.
        submit = _submit_directory(source_dir)
        if mode == "docker" and not submit.startswith("s3://"):
            submit = "/opt/ml/code"
        hyperparameters[SDK_PROGRAM_KEY] = json.dumps(entry_point)
        hyperparameters[SDK_SUBMIT_DIR_KEY] = json.dumps(submit)
    job_mode, per_channel_modes = _split_input_modes(input_modes)
    spec = TrainingJobSpec(
        job_name=job_name or default_job_name(
            Path(entry_point).stem if entry_point else "smbyoc-training"),
        hyperparameters=hyperparameters,
        channels=_channels(channel_pairs, dict(parse_pairs(content_types, "--content-type")),
                           per_channel_modes, job_mode),
        instance_type=instance_type,
        instance_count=instance_count,
        environment=dict(parse_pairs(env_pairs, "--env")),
        region=region,
    ).validate()
    backend = _backend(mode, image, train_command, source_dir if entry_point else None, stop_timeout, user)
    click.echo(f"Training job {spec.job_name} ({mode} mode, {spec.instance_count} x {spec.instance_type})",
               err=True)
    result = run_training_job(
        spec, backend, output_dir.resolve(), keep_tree=keep_tree,
        on_status=lambda primary, secondary: click.echo(f"[{spec.job_name}] {secondary}", err=True),
    )
    echo_result(result, as_json)
    if result.status == "Stopped":
        raise SystemExit(exit_codes.STOPPED)
    if not result.succeeded:
        raise SystemExit(result.exit_code or exit_codes.FAILURE)


def _backend(
    mode: str, image: str | None, train_command: str | None, code_dir: Path | None, stop_timeout: float,
    user: str | None,
) -> TrainingBackend:
    if mode == "process":
        from smbyoc.emulator.process_backend import ProcessBackend, default_train_command

        if user is not None:
            raise ConfigError("only for --mode docker", key="--user")
        command = shlex.split(train_command) if train_command else default_train_command()
        if train_command:
            first = Path(command[0])
            if first.parent != Path() and not first.exists():
                raise ConfigError("no such file", key=f"--train-command {command[0]}")
        return ProcessBackend(command=command, stop_timeout=stop_timeout)
    from smbyoc.build.docker_client import get_client
    from smbyoc.emulator.docker_training import DockerTrainingBackend

    if user is not None and not all(part.isdigit() for part in user.split(":", 1)):
        raise ConfigError("expected a numeric UID or UID:GID", key=f"--user {user}")
    client = get_client()
    if image is None:
        from smbyoc.build.defaults import ensure_default_image

        image = ensure_default_image(client, "train")
    local_code = code_dir if code_dir is not None and not str(code_dir).startswith("s3://") else None
    return DockerTrainingBackend(client=client, image=image, code_dir=local_code, stop_timeout=stop_timeout,
                                 user=user)


def _submit_directory(source_dir: Path | None) -> str:
    if source_dir is None:
        return ""
    text = str(source_dir)
    if text.startswith(("s3://", "file://")):
        return text
    path = source_dir.expanduser()
    if not path.exists():
        raise ConfigError("no such file or directory", key=f"--source-dir {text}")
    return str(path.resolve())


COMMANDS = [local_train]
