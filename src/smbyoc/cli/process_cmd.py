"""``smbyoc local-process``: run a processing job exactly as SageMaker Processing would, locally."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from smbyoc.cli import library_errors
from smbyoc.cli.options import endpoint_url_option, parse_pairs, progress_line, quiet_aws_logs
from smbyoc.cli.status_line import job_output
from smbyoc.emulator import job_logs
from smbyoc.emulator.processing_request import (
    RequestOverrides,
    anchor_local_paths,
    load_request,
    merge_request,
)
from smbyoc.emulator.processing_result import ProcessingJobResult
from smbyoc.emulator.processing_spec import END_OF_JOB
from smbyoc.errors import ConfigError
from smbyoc.logs import terminal_safe
from smbyoc.s3.staging import Staging, check_location

_CONTAINER_ML = "/opt/ml/"


def parse_inputs(values: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    """``NAME=SRC[:/DEST]`` → ``(name, source, LocalPath or None)``; SRC may be a ``file://`` or ``s3://`` URI.
    DEST is whatever follows the last ``:/`` that does not begin a URI's ``://`` (checked as a LocalPath later)."""
    found = []
    for name, rest in parse_pairs(values, "--input"):
        cut = rest.rfind(":/")
        if cut > 0 and rest[cut:cut + 3] == "://" and rest[:cut].isalnum():
            cut = -1  # the scheme of a URI (s3://, file://), not DEST
        source, local = (rest[:cut], rest[cut + 1:]) if cut > 0 else (rest, None)
        if not source:
            raise ConfigError("expected NAME=SRC[:/opt/ml/processing/DEST]", key=f"--input {name}={rest}")
        check_location(source, what=f"--input {name}")
        found.append((name, source, local))
    return found


def parse_outputs(values: tuple[str, ...]) -> list[tuple[str, str | None, str]]:
    """``NAME=[/opt/ml/processing/SRC:]DEST`` → ``(name, LocalPath or None, destination)``."""
    found = []
    for name, rest in parse_pairs(values, "--output"):
        local: str | None = None
        destination = rest
        if rest.startswith(_CONTAINER_ML):
            local, sep, destination = rest.partition(":")
            if not sep:
                raise ConfigError("expected NAME=/opt/ml/processing/SRC:DEST", key=f"--output {name}={rest}")
        if not destination:
            raise ConfigError("the destination is empty", key=f"--output {name}={rest}")
        check_location(destination, what=f"--output {name}")
        found.append((name, local, destination))
    return found


def parse_settings(values: tuple[str, ...], setting: str) -> list[tuple[str, str | None, str]]:
    """``VALUE`` (every input or output) or ``NAME=VALUE`` (one) items of a per-input option."""
    found: list[tuple[str, str | None, str]] = []
    for value in values:
        name, sep, choice = value.partition("=")
        found.append((setting, name, choice) if sep else (setting, None, value))
    return found



def echo_result(result: ProcessingJobResult, as_json: bool, staging: Staging) -> None:
    if as_json:
        click.echo(json.dumps(staging.restore_uris(result.describe()), indent=2))
        return
    spec = result.spec
    click.secho(f"Processing job {result.job_name}: {result.status} in {result.seconds:.1f} s, "
                f"{spec.instance_count} x {spec.instance_type}, exit status {result.exit_code}",
                fg="green" if result.succeeded else "red", bold=True, err=True)
    if result.failure_reason:
        click.echo("FailureReason: " + terminal_safe(result.failure_reason.rstrip()), err=True)
    if result.exit_message:
        click.echo("ExitMessage: " + terminal_safe(result.exit_message.rstrip()), err=True)
    if len(result.hosts) > 1:
        for host in result.hosts:
            note = " (stopped by the emulator)" if host.stopped_by_emulator else ""
            click.echo(f"  {host.host}: exit status {host.exit_code}{note}", err=True)
    for output in spec.outputs:
        if output.destination is not None:
            click.echo(f"  {output.name}: {staging.uri_of(output.destination)}")


@click.command("local-process")
@click.option("--request", "request_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A CreateProcessingJob request (JSON, boto3's shape); the flags below override its fields. "
                   "Relative local paths in it are read from the file's folder.")
@click.option("--image", metavar="IMAGE", help="AppSpecification.ImageUri: the processing image (in the local engine).")
@click.option("--job-name", metavar="NAME", help="ProcessingJobName (generated when absent).")
@click.option("-i", "--input", "inputs", multiple=True, metavar="NAME=SRC[:/opt/ml/processing/DEST]",
              help="A ProcessingInput: a local folder or file, file:// or s3:// URI, copied to DEST (default "
                   "/opt/ml/processing/input/NAME). Repeatable; replaces the request's input of that name.")
@click.option("-o", "--output", "outputs", multiple=True, metavar="NAME=[/opt/ml/processing/SRC:]DEST",
              help="A ProcessingOutput: SRC (default /opt/ml/processing/output/NAME) copied to DEST, a folder or "
                   "s3:// prefix. Repeatable.")
@click.option("--input-mode", "input_modes", multiple=True, metavar="MODE|NAME=MODE",
              help="S3InputMode of every input or one: File (copied before start) or Pipe (streamed through "
                   "FIFOs, by default <LocalPath>_<epoch>: see --pipe-path). Repeatable.")
@click.option("--compression", "compressions", multiple=True, metavar="TYPE|NAME=TYPE",
              help="S3CompressionType of every input or one: None, or Gzip (Pipe mode only: each object is "
                   "decompressed while streaming). Repeatable.")
@click.option("--pipe-path", metavar="PATTERN", envvar="SMBYOC_PROCESSING_PIPE_PATH", show_envvar=True,
              help="Where a Pipe-mode input's FIFOs appear in the container (SageMaker does not document it): "
                   "{local_path}, {input_name} and {epoch} are replaced; default {local_path}_{epoch}.")
@click.option("--distribution", "distributions", multiple=True, metavar="TYPE|NAME=TYPE",
              help="S3DataDistributionType: FullyReplicated, or ShardedByS3Key (instance i of N gets every N-th "
                   "object by sorted key). Repeatable.")
@click.option("--s3-data-type", "data_types", multiple=True, metavar="TYPE|NAME=TYPE",
              help="S3DataType: S3Prefix (a folder or file) or ManifestFile (a manifest). Repeatable.")
@click.option("--upload-mode", "upload_modes", multiple=True, metavar="MODE|NAME=MODE",
              help=f"S3UploadMode of every output or one: {END_OF_JOB} (copied when the job ends) or Continuous "
                   "(also copied while it runs, each file once it stopped changing). Repeatable.")
@click.option("--entrypoint", metavar="CMD",
              help="AppSpecification.ContainerEntrypoint, split like a shell (e.g. 'python3 /code/run.py').")
@click.option("-a", "--argument", "arguments", multiple=True, metavar="ARG",
              help="One AppSpecification.ContainerArguments item. Repeatable.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable (CreateProcessingJob Environment; wins over the request's). Repeatable.")
@click.option("--instance-type", metavar="TYPE",
              help="ClusterConfig.InstanceType (CPU/memory limits; default local: none).")
@click.option("--instance-count", type=int, metavar="N", help="ClusterConfig.InstanceCount (default 1).")
@click.option("--max-runtime", type=int, metavar="SECONDS",
              help="StoppingCondition.MaxRuntimeInSeconds (default 86400): SIGINT at the limit, SIGKILL after "
                   "the stop timeout; the job ends Stopped.")
@click.option("--network-isolation", is_flag=True, default=None,
              help="NetworkConfig.EnableNetworkIsolation: no network (several instances: only each other).")
@click.option("--role-arn", metavar="ARN", help="RoleArn written to processingjobconfig.json (default a placeholder).")
@click.option("--region", default="us-east-1", help="Region used in the job ARN.")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=120.0,
              help="Seconds between SIGINT and SIGKILL when the job is stopped.")
@click.option("--continuous-interval", type=click.FloatRange(min=0.05), default=1.0,
              help="Seconds between two scans of the Continuous outputs.")
@click.option("--user", metavar="UID[:GID]", help="Run the containers as this user instead of the image's.")
@click.option("--keep-tree", is_flag=True, help="Keep the job's /opt/ml trees for inspection.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a DescribeProcessingJob-shaped JSON result, alone on stdout (the job's logs go to stderr).")
@endpoint_url_option
@library_errors
def local_process(
    request_file: str | None, image: str | None, job_name: str | None, inputs: tuple[str, ...],
    outputs: tuple[str, ...], input_modes: tuple[str, ...], compressions: tuple[str, ...], pipe_path: str | None,
    distributions: tuple[str, ...],
    data_types: tuple[str, ...], upload_modes: tuple[str, ...], entrypoint: str | None, arguments: tuple[str, ...],
    env_pairs: tuple[str, ...], instance_type: str | None, instance_count: int | None, max_runtime: int | None,
    network_isolation: bool | None, role_arn: str | None, region: str, stop_timeout: float,
    continuous_interval: float, user: str | None, keep_tree: bool, as_json: bool, endpoint_url: str | None,
) -> None:
    """Run a processing job as SageMaker Processing would: `docker run IMAGE` per instance, inputs copied
    below /opt/ml/processing, outputs copied out, /opt/ml/config/processingjobconfig.json and
    resourceconfig.json written, /opt/ml/output/message as the ExitMessage. Ctrl-C stops it like
    StopProcessingJob. The hosts' lines also go to <smbyoc state dir>/logs/processing-job-JOB_NAME.log
    (`smbyoc logs JOB_NAME`). See docs/processing.md.

    \b
    Examples:
      smbyoc local-process --image my-proc -i raw=./data:/opt/ml/processing/input/raw \\
          -o clean=/opt/ml/processing/output:./out --entrypoint 'python3 /code/prep.py' -a --split -a 0.2
      smbyoc local-process --request job.json                  # a CreateProcessingJob request file
      smbyoc local-process --request job.json --instance-count 2 --distribution ShardedByS3Key
      smbyoc local-process --image my-proc -i raw=s3://bucket/raw/ -o out=s3://bucket/out/ --upload-mode Continuous
      smbyoc local-process --image my-proc -i raw=./gz --input-mode Pipe --compression Gzip   # reads ..._0
    """
    from smbyoc.emulator.processing_job import default_name, run_local_processing

    quiet_aws_logs()
    base = None
    source = "options"
    if request_file is not None:
        base = anchor_local_paths(load_request(request_file), Path(request_file).resolve().parent)
        source = request_file
    settings = [*parse_settings(input_modes, "S3InputMode"), *parse_settings(compressions, "S3CompressionType"),
                *parse_settings(distributions, "S3DataDistributionType"),
                *parse_settings(data_types, "S3DataType"), *parse_settings(upload_modes, "S3UploadMode")]
    flags = RequestOverrides(
        job_name=job_name, image=image, inputs=parse_inputs(inputs), outputs=parse_outputs(outputs),
        settings=settings, entrypoint=None if entrypoint is None else shlex.split(entrypoint),
        arguments=list(arguments) if arguments else None, environment=dict(parse_pairs(env_pairs, "--env")),
        instance_type=instance_type, instance_count=instance_count, max_runtime_seconds=max_runtime,
        network_isolation=network_isolation, role_arn=role_arn)
    request = merge_request(base, flags, default_name=default_name())
    if not (request.get("AppSpecification") or {}).get("ImageUri"):
        raise ConfigError("give the processing image (--image, or AppSpecification.ImageUri in --request)",
                          key="--image")
    with Staging(endpoint_url=endpoint_url, progress=progress_line) as staging:
        # The log file: <smbyoc state dir>/logs/processing-job-NAME.log.
        with job_output(job_logs.PROCESSING, as_json, lambda spec: f"Processing job {spec.job_name} ({spec.image}, "
                                                                   f"{spec.instance_count} x {spec.instance_type})"
                        ) as out:
            result = run_local_processing(
                request, staging=staging, source=source, region=region, stop_timeout=stop_timeout, user=user,
                keep_tree=keep_tree, continuous_interval=continuous_interval, on_start=out.on_start,
                on_status=out.console.on_status, sink=out.sink, pipe_path=pipe_path)
        staging.publish()
        echo_result(result, as_json, staging)
    if not result.succeeded:
        raise SystemExit(result.exit_code or 1)

COMMANDS = [local_process]
