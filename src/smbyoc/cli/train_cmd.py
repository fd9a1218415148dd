"""``smbyoc local-train``: run a training job exactly as SageMaker would, locally."""

from __future__ import annotations

import json
import shlex
import sys

import click

from smbyoc import exit_codes
from smbyoc.cli import library_errors
from smbyoc.cli.options import (
    LOCATION,
    channel_data_type,
    endpoint_url_option,
    parse_channel_settings,
    parse_locations,
    parse_pairs,
    progress_line,
    quiet_aws_logs,
)
from smbyoc.cli.request_options import maybe_print_or_submit_training, request_options
from smbyoc.cli.status_line import job_output
from smbyoc.emulator import job_logs
from smbyoc.emulator.job_spec import load_hyperparameters_argument, merge_hyperparameters
from smbyoc.emulator.local_training import LocalTrainingJob, run_local_training
from smbyoc.emulator.result import TrainingJobResult
from smbyoc.errors import ConfigError
from smbyoc.logs import terminal_safe
from smbyoc.s3.staging import Staging


def echo_result(result: TrainingJobResult, as_json: bool, staging: Staging | None = None) -> None:
    """The result on stdout (``--json``) or stderr; with ``staging``, S3 locations stand where they were given."""
    where = staging.uri_of if staging is not None else str
    if as_json:
        describe = result.describe()
        click.echo(json.dumps(staging.restore_uris(describe) if staging is not None else describe, indent=2))
        return
    colour = "green" if result.succeeded else "red"
    status = result.status if result.secondary_status in (result.status, "Completed") else \
        f"{result.status} ({result.secondary_status})"
    click.secho(f"Training job {result.job_name}: {status} in {result.training_seconds:.1f} s, "
                f"{result.instance_count} x {result.instance_type}, exit status {result.exit_code}"
                + (f", {result.interruptions} spot interruption(s)" if result.spot else ""),
                fg=colour, bold=True, err=True)
    if result.failure_reason:
        click.echo("FailureReason: " + terminal_safe(result.failure_reason.rstrip()), err=True)
    if len(result.hosts) > 1:
        for host in result.hosts:
            note = " (stopped by the emulator)" if host.stopped_by_emulator else ""
            if host.failure_reason and not host.stopped_by_emulator:
                note += " - " + terminal_safe(host.failure_reason.strip().splitlines()[0][:200])
            click.echo(f"  {host.host}: exit status {host.exit_code}{note}", err=True)
    if result.artifacts is not None:
        for artifact in (result.artifacts.model, result.artifacts.output):
            click.echo(f"  {where(artifact.path)}  ({human_size(artifact.size)})")
        for clash in result.artifacts.clashes:
            click.echo(f"  warning: name clash: {clash}", err=True)
    if result.checkpoint_dir:
        click.echo(f"  checkpoints: {where(result.checkpoint_dir)}", err=True)


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
@request_options("training")
@click.option("--mode", type=click.Choice(["docker", "process"]), default="docker",
              help="process: run `train` as a local process (no Docker; debuggers work); "
                   "docker: run the image as SageMaker does.")
@click.option("--image", metavar="IMAGE", help="Training image (docker mode).")
@click.option("-e", "--entry-point", metavar="PROGRAM",
              help="Program in --source-dir to run (sets the sagemaker_program hyperparameter).")
@click.option("-s", "--source-dir", type=LOCATION, metavar="DIR",
              help="Directory, file:// URI or .tar.gz with the user code (sagemaker_submit_directory); "
                   "s3://.../sourcedir.tar.gz is downloaded and unpacked.")
@click.option("--train-command", metavar="CMD",
              help="Process mode: the program run as `train` (default: smbyoc's runtime). Use it to run "
                   "your own `train` executable.")
@click.option("-c", "--channel", "channels", multiple=True, metavar="NAME=PATH",
              help="Input channel: a directory or file copied into /opt/ml/input/data/NAME, or an s3:// prefix, "
                   "object or (--s3-data-type ManifestFile) manifest, downloaded through the cache. Repeatable.")
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
@click.option("-o", "--output-dir", type=LOCATION, default="smbyoc-output",
              help="Artifacts go to OUTPUT_DIR/JOB_NAME/output/{model,output}.tar.gz (S3OutputPath: a directory "
                   "or an s3:// prefix, uploaded when the job ends).")
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
@click.option("--checkpoint-s3-dir", type=LOCATION, metavar="DIR",
              help="CheckpointConfig.S3Uri: copied into /opt/ml/checkpoints at start, synced back while running "
                   "and at the end (an s3:// prefix: downloaded at start, uploaded when the job ends).")
@click.option("--spot-interruption-after", type=float, metavar="SECONDS",
              help="Managed spot emulation: reclaim the instances this long after start (SIGTERM, then "
                   "SIGKILL) and restart the job once, resuming from its checkpoints.")
@click.option("--network-isolation", is_flag=True,
              help="EnableNetworkIsolation: containers get no network (several hosts: only each other).")
@click.option("--gpus", type=int, metavar="N",
              help="Docker mode: GPUs to request per container (-1: all). Default: the instance type's.")
@click.option("--keep-tree", is_flag=True, help="Keep the job's /opt/ml tree for inspection.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a DescribeTrainingJob-shaped JSON result, alone on stdout (the job's logs go to stderr).")
@endpoint_url_option
@library_errors
def local_train(
    mode: str, image: str | None, entry_point: str | None, source_dir: str | None,
    train_command: str | None, channels: tuple[str, ...], content_types: tuple[str, ...],
    input_modes: tuple[str, ...], distributions: tuple[str, ...], compressions: tuple[str, ...],
    record_wrappers: tuple[str, ...], data_types: tuple[str, ...], max_runtime: float | None,
    checkpoint_s3_dir: str | None, spot_interruption_after: float | None, network_isolation: bool,
    gpus: int | None, hyperparameters_json: str | None, hyperparameter_pairs: tuple[str, ...],
    json_encode_hyperparameters: bool, job_name: str | None, output_dir: str, instance_type: str,
    instance_count: int, env_pairs: tuple[str, ...], region: str, stop_timeout: float, user: str | None,
    keep_tree: bool, as_json: bool, endpoint_url: str | None,
) -> None:
    """Run a training job as SageMaker would and write its model.tar.gz and output.tar.gz.

    With no program and no image, trains the bundled default example (a small PyTorch model on a
    dataset shipped with smbyoc).

    The hosts' lines also go to <smbyoc state dir>/logs/training-job-JOB_NAME.log (`smbyoc logs JOB_NAME`;
    in process mode the program's output passes through pipes on its way to the terminal, except when
    run on a terminal, where the program keeps it for breakpoint() and its output is not logged).

    \b
    Examples:
      smbyoc local-train                      # default example in the default train image
      smbyoc local-train --image my-algo:latest -c train=./data --instance-type ml.m5.large
      smbyoc local-train --mode process -e train.py -s ./src -c train=./data -H epochs=3
      smbyoc local-train --mode process --train-command ./train -c train=./data --job-name my-job
      smbyoc local-train --instance-count 2 --env SMBYOC_LAUNCHER=torchrun     # DDP over 2 containers
      smbyoc local-train --image my-algo -c train=./data --input-mode Pipe --compression train=Gzip
      smbyoc local-train --checkpoint-s3-dir ./ckpt --spot-interruption-after 30 --max-runtime 600
      smbyoc local-train -c train=s3://my-bucket/data/train/ -o s3://my-bucket/jobs   # S3 in and out
      smbyoc local-train --image ECR_URI -c train=s3://b/t --instance-type ml.m5.large --role-arn ARN --print-request
    """
    if maybe_print_or_submit_training():
        return
    quiet_aws_logs()
    base_hps: dict[str, object] = load_hyperparameters_argument(hyperparameters_json) if hyperparameters_json else {}
    hp_pairs = parse_pairs(hyperparameter_pairs, "-H")
    channel_pairs = parse_locations(channels, "--channel")
    settings = (*parse_channel_settings(input_modes, "input_mode"),
                *parse_channel_settings(distributions, "distribution"),
                *parse_channel_settings(compressions, "compression"),
                *parse_channel_settings(record_wrappers, "record_wrapper"),
                *parse_channel_settings(data_types, "data_type"))
    # s3:// locations become local paths before the job (outputs first: a missing bucket is said at once),
    # and the outputs are uploaded after it; the emulator itself only sees local paths.
    with Staging(endpoint_url=endpoint_url, progress=progress_line) as staging:
        job = LocalTrainingJob(
            mode="process" if mode == "process" else "docker",
            image=image,
            entry_point=entry_point,
            output_dir=staging.output(output_dir, what="--output-dir"),
            checkpoint_dir=None if checkpoint_s3_dir is None else
            staging.checkpoints(checkpoint_s3_dir, what="--checkpoint-s3-dir"),
            source_dir=None if source_dir is None else staging.code(source_dir, what="--source-dir"),
            train_command=None if train_command is None else tuple(shlex.split(train_command)),
            channels=tuple((name, staging.input(path, what=f"--channel {name}",
                                                data_type=channel_data_type(settings, name)))
                           for name, path in channel_pairs),
            content_types=dict(parse_pairs(content_types, "--content-type")),
            channel_settings=settings,
            hyperparameters=merge_hyperparameters(base_hps, hp_pairs, json_encode=json_encode_hyperparameters),
            json_encode_hyperparameters=json_encode_hyperparameters,
            job_name=job_name,
            instance_type=instance_type,
            instance_count=instance_count,
            environment=dict(parse_pairs(env_pairs, "--env")),
            region=region,
            stop_timeout=stop_timeout,
            user=user,
            max_runtime_seconds=max_runtime,
            spot_interruption_after=spot_interruption_after,
            network_isolation=network_isolation,
            gpus=gpus,
            keep_tree=keep_tree,
        )
        # Process mode on a terminal: the program keeps the terminal itself (breakpoint() and pdb need it), so
        # its output is not logged; elsewhere (CI, pipes) it passes through pipes into the log file as well.
        shares_terminal = mode == "process" and sys.stdin.isatty() and sys.stdout.isatty()
        note = ("process mode on a terminal: the program's output went to the terminal only (so that a debugger "
                "works); run it with output redirected to log it") if shares_terminal else None
        with job_output(job_logs.TRAINING, as_json, lambda spec: f"Training job {spec.job_name} ({mode} mode, "
                                                                 f"{spec.instance_count} x {spec.instance_type})",
                        start_note=note) as out:
            # Process mode: the program's output passes through as it comes (and into the log file).
            result = run_local_training(job, on_start=out.on_start, on_status=out.console.on_status,
                                        sink=None if shares_terminal else out.run_log.sink if mode == "process"
                                        else out.sink, echo=mode == "process" and not shares_terminal)
        staging.publish()
        echo_result(result, as_json, staging)
    if result.status == "Stopped":
        raise SystemExit(exit_codes.STOPPED)
    if not result.succeeded:
        raise SystemExit(result.exit_code or exit_codes.FAILURE)


@click.command("stop")
@click.argument("job_name", required=False)
@click.option("--list", "list_jobs", is_flag=True, help="List the running emulated training jobs.")
@click.option("--all", "stop_all", is_flag=True,
              help="Stop every running job and endpoint, and remove what orphaned ones (their smbyoc process "
                   "was killed) left: processes, containers, networks, temporary trees, .partial files.")
@library_errors
def stop(job_name: str | None, list_jobs: bool, stop_all: bool) -> None:
    """Stop a running `local-train` job as StopTrainingJob does (SIGTERM, then SIGKILL after the grace
    period); the job ends `Stopped`. A job whose `smbyoc` process was killed is removed at once.

    \b
    Examples:
      smbyoc stop --list
      smbyoc stop my-job-2026-11-21-10-00-00-000
      smbyoc stop --all                      # every job and endpoint (see `smbyoc ps`)
    """
    from smbyoc.emulator import jobs, sweep

    if stop_all:
        if job_name is not None:
            raise ConfigError("give a job or --all, not both", key="--all")
        stopped, removed = sweep.stop_all(echo=lambda line: click.echo(line, err=True))
        if removed:
            click.echo(sweep.summary(removed), err=True)
        elif not stopped:
            click.echo("Nothing to stop.", err=True)
        return
    if list_jobs or job_name is None:
        running = jobs.running_jobs()
        if job_name is None and not list_jobs:
            raise ConfigError(f"give the job to stop (running: {', '.join(sorted(running)) or 'none'})",
                              key="JOB_NAME")
        for name, pid in sorted(running.items()):
            click.echo(f"{name}\tpid {pid}")
        return
    record = jobs.find(job_name)
    if record.orphaned:
        removed = sweep.sweep_record(record)
        click.echo(f"{job_name}: its smbyoc process (pid {record.owner.pid}) is gone; removed: "
                   f"{'; '.join(removed) or 'nothing was left'}", err=True)
        return
    pid = jobs.stop_owner(record)
    click.echo(f"Stopping {job_name} (emulator pid {pid}): SIGTERM now, SIGKILL after the grace period.", err=True)


COMMANDS = [local_train, stop]
