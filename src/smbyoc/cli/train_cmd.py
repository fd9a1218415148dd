"""``smbyoc local-train``: run a training job exactly as SageMaker would, locally."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from smbyoc import exit_codes
from smbyoc.cli import library_errors
from smbyoc.cli.options import parse_pairs
from smbyoc.emulator.containers import LineSink
from smbyoc.emulator.job_spec import (
    COMPRESSION_TYPES,
    DISTRIBUTIONS,
    INPUT_MODES,
    RECORD_WRAPPER_TYPES,
    S3_DATA_TYPES,
    SDK_PROGRAM_KEY,
    SDK_SUBMIT_DIR_KEY,
    ChannelSpec,
    TrainingJobSpec,
    build_hyperparameters,
    default_job_name,
    load_hyperparameters_argument,
)
from smbyoc.emulator.result import TrainingJobResult
from smbyoc.emulator.status import StatusDisplay
from smbyoc.emulator.training_job import TrainingBackend
from smbyoc.errors import ConfigError


def _per_channel(values: tuple[str, ...], option: str, allowed: tuple[str, ...], default: str,
                 names: list[str]) -> tuple[str, dict[str, str]]:
    """``VALUE`` (the job's) or ``NAME=VALUE`` (one channel's) options; one line for each bad value."""
    job_value = default
    per_channel: dict[str, str] = {}
    for value in values:
        if "=" in value:
            name, choice = value.split("=", 1)
            if name not in names:
                raise ConfigError(f"no such channel (channels: {', '.join(names) or 'none'})",
                                  key=f"{option} {value}")
            per_channel[name] = choice
        else:
            job_value = value
    for where, choice in [("job=", job_value), *((f"{n}=", c) for n, c in per_channel.items())]:
        if choice not in allowed:
            raise ConfigError(f"expected one of {', '.join(allowed)}", key=f"{option} {where}{choice}")
    return job_value, per_channel


def _channels(
    channel_pairs: list[tuple[str, str]],
    content_types: dict[str, str],
    input_modes: tuple[str, ...],
    distributions: tuple[str, ...] = (),
    compressions: tuple[str, ...] = (),
    record_wrappers: tuple[str, ...] = (),
    data_types: tuple[str, ...] = (),
) -> tuple[ChannelSpec, ...]:
    names = [name for name, _ in channel_pairs]
    unknown = sorted(set(content_types) - set(names))
    if unknown:
        raise ConfigError(f"no such channel (channels: {', '.join(names) or 'none'})",
                          key=f"--content-type {unknown[0]}")
    mode, modes = _per_channel(input_modes, "--input-mode", INPUT_MODES, "File", names)
    dist, dists = _per_channel(distributions, "--distribution", DISTRIBUTIONS, "FullyReplicated", names)
    comp, comps = _per_channel(compressions, "--compression", COMPRESSION_TYPES, "None", names)
    wrap, wraps = _per_channel(record_wrappers, "--record-wrapper", RECORD_WRAPPER_TYPES, "None", names)
    kind, kinds = _per_channel(data_types, "--s3-data-type", S3_DATA_TYPES, "S3Prefix", names)
    return tuple(
        ChannelSpec(
            name=name,
            source=Path(path).expanduser(),
            input_mode=modes.get(name, mode),
            content_type=content_types.get(name),
            distribution=dists.get(name, dist),
            compression=comps.get(name, comp),
            record_wrapper=wraps.get(name, wrap),
            data_type=kinds.get(name, kind),
        )
        for name, path in channel_pairs
    )


def echo_result(result: TrainingJobResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.describe(), indent=2))
        return
    colour = "green" if result.succeeded else "red"
    status = result.status if result.secondary_status in (result.status, "Completed") else \
        f"{result.status} ({result.secondary_status})"
    click.secho(f"Training job {result.job_name}: {status} in {result.training_seconds:.1f} s, "
                f"{result.instance_count} x {result.instance_type}, exit status {result.exit_code}"
                + (f", {result.interruptions} spot interruption(s)" if result.spot else ""),
                fg=colour, bold=True, err=True)
    if result.failure_reason:
        click.echo("FailureReason: " + result.failure_reason.rstrip(), err=True)
    if len(result.hosts) > 1:
        for host in result.hosts:
            note = " (stopped by the emulator)" if host.stopped_by_emulator else ""
            click.echo(f"  {host.host}: exit status {host.exit_code}{note}", err=True)
    if result.artifacts is not None:
        for artifact in (result.artifacts.model, result.artifacts.output):
            click.echo(f"  {artifact.path}  ({human_size(artifact.size)})")
        for clash in result.artifacts.clashes:
            click.echo(f"  warning: name clash: {clash}", err=True)
    if result.checkpoint_dir:
        click.echo(f"  checkpoints: {result.checkpoint_dir}", err=True)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit} ({size:,} bytes)"


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
              help="TrainingInputMode for the job or one channel: File (copied in), FastFile (read-only) or "
                   "Pipe (streamed through <channel>_<epoch> FIFOs). Repeatable.")
@click.option("--distribution", "distributions", multiple=True, metavar="TYPE|NAME=TYPE",
              help="S3DataDistributionType for the job or one channel: FullyReplicated or ShardedByS3Key "
                   "(each host gets every N-th file by sorted key). Repeatable.")
@click.option("--compression", "compressions", multiple=True, metavar="TYPE|NAME=TYPE",
              help="CompressionType of the job's or one channel's files: None or Gzip (Pipe mode; "
                   "decompressed on the way). Repeatable.")
@click.option("--record-wrapper", "record_wrappers", multiple=True, metavar="TYPE|NAME=TYPE",
              help="RecordWrapperType: None or RecordIO (Pipe mode; each file becomes one RecordIO record). "
                   "Repeatable.")
@click.option("--s3-data-type", "data_types", multiple=True, metavar="TYPE|NAME=TYPE",
              help="S3DataType: S3Prefix (the channel path is a folder or file) or ManifestFile (the channel "
                   "path is a manifest: [{\"prefix\": DIR}, \"key\", ...]). Repeatable.")
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
@click.option("--max-runtime", type=float, metavar="SECONDS",
              help="StoppingCondition.MaxRuntimeInSeconds: SIGTERM at the limit, SIGKILL after the stop "
                   "timeout; the job ends Failed / MaxRuntimeExceeded.")
@click.option("--checkpoint-s3-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Stands for CheckpointConfig.S3Uri: copied into /opt/ml/checkpoints at start, synced back "
                   "while running and at the end.")
@click.option("--spot-interruption-after", type=float, metavar="SECONDS",
              help="Managed spot emulation: reclaim the instances this long after start (SIGTERM, then "
                   "SIGKILL) and restart the job once, resuming from its checkpoints.")
@click.option("--network-isolation", is_flag=True,
              help="EnableNetworkIsolation: containers get no network (several hosts: only each other).")
@click.option("--gpus", type=int, metavar="N",
              help="Docker mode: GPUs to request per container (-1: all). Default: the instance type's.")
@click.option("--keep-tree", is_flag=True, help="Keep the job's /opt/ml tree for inspection.")
@click.option("--json", "as_json", is_flag=True, help="Print a DescribeTrainingJob-shaped JSON result.")
@library_errors
def local_train(
    mode: str, image: str | None, entry_point: str | None, source_dir: Path | None,
    train_command: str | None, channels: tuple[str, ...], content_types: tuple[str, ...],
    input_modes: tuple[str, ...], distributions: tuple[str, ...], compressions: tuple[str, ...],
    record_wrappers: tuple[str, ...], data_types: tuple[str, ...], max_runtime: float | None,
    checkpoint_s3_dir: Path | None, spot_interruption_after: float | None, network_isolation: bool,
    gpus: int | None, hyperparameters_json: str | None, hyperparameter_pairs: tuple[str, ...],
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
      smbyoc local-train --instance-count 2 --env SMBYOC_LAUNCHER=torchrun     # DDP over 2 containers
      smbyoc local-train --image my-algo -c train=./data --input-mode Pipe --compression train=Gzip
      smbyoc local-train --checkpoint-s3-dir ./ckpt --spot-interruption-after 30 --max-runtime 600
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
    spec = TrainingJobSpec(
        job_name=job_name or default_job_name(
            Path(entry_point).stem if entry_point else "smbyoc-training"),
        hyperparameters=hyperparameters,
        channels=_channels(channel_pairs, dict(parse_pairs(content_types, "--content-type")), input_modes,
                           distributions, compressions, record_wrappers, data_types),
        instance_type=instance_type,
        instance_count=instance_count,
        environment=dict(parse_pairs(env_pairs, "--env")),
        region=region,
        max_runtime_seconds=max_runtime,
        network_isolation=network_isolation,
        gpus=gpus,
        checkpoint_dir=checkpoint_s3_dir.expanduser().resolve() if checkpoint_s3_dir else None,
        spot_interruption_after=spot_interruption_after,
    ).validate()
    if gpus is not None and mode == "process":
        raise ConfigError("only for --mode docker (a local process sees the machine's GPUs)", key="--gpus")
    display = StatusDisplay(spec.job_name, spec.instance_count)
    backend = _backend(mode, image, train_command, source_dir if entry_point else None, stop_timeout, user,
                       display.log_line)
    preflight = getattr(backend, "preflight", None)
    if preflight is not None:
        preflight(spec)  # every bad input is refused before any container starts
    click.echo(f"Training job {spec.job_name} ({mode} mode, {spec.instance_count} x {spec.instance_type})",
               err=True)
    display.start()
    try:
        result = run_training_job(spec, backend, output_dir.resolve(), keep_tree=keep_tree,
                                  on_status=display.on_status)
    finally:
        display.close()
    echo_result(result, as_json)
    if result.status == "Stopped":
        raise SystemExit(exit_codes.STOPPED)
    if not result.succeeded:
        raise SystemExit(result.exit_code or exit_codes.FAILURE)


def _backend(
    mode: str, image: str | None, train_command: str | None, code_dir: Path | None, stop_timeout: float,
    user: str | None, sink: LineSink | None = None,
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
        image = _default_train_image(client)
    local_code = code_dir if code_dir is not None and not str(code_dir).startswith("s3://") else None
    return DockerTrainingBackend(client=client, image=image, code_dir=local_code, stop_timeout=stop_timeout,
                                 user=user, sink=sink)


def _default_train_image(client: object) -> str:
    try:
        from smbyoc.build.defaults import ensure_default_image  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from smbyoc.build.builder import ensure_image

        return ensure_image("train", "cpu", client=client)
    return str(ensure_default_image(client, "train"))


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


@click.command("stop")
@click.argument("job_name", required=False)
@click.option("--list", "list_jobs", is_flag=True, help="List the running emulated training jobs.")
@library_errors
def stop(job_name: str | None, list_jobs: bool) -> None:
    """Stop a running `local-train` job as StopTrainingJob does (SIGTERM, then SIGKILL after the grace
    period); the job ends `Stopped`.

    \b
    Examples:
      smbyoc stop --list
      smbyoc stop my-job-2026-11-21-10-00-00-000
    """
    from smbyoc.emulator.jobs import running_jobs, stop_job

    if list_jobs or job_name is None:
        jobs = running_jobs()
        if job_name is None and not list_jobs:
            raise ConfigError(f"give the job to stop (running: {', '.join(sorted(jobs)) or 'none'})", key="JOB_NAME")
        for name, pid in sorted(jobs.items()):
            click.echo(f"{name}\tpid {pid}")
        return
    pid = stop_job(job_name)
    click.echo(f"Stopping {job_name} (emulator pid {pid}): SIGTERM now, SIGKILL after the grace period.", err=True)


COMMANDS = [local_train, stop]
