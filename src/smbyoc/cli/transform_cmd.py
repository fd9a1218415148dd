"""``smbyoc local-transform``: a batch transform job, run as SageMaker runs it (one library call)."""

from __future__ import annotations

import contextlib
import json
import signal
from types import FrameType
from typing import TextIO

import click

from smbyoc import exit_codes
from smbyoc.cli import library_errors
from smbyoc.cli.options import LOCATION, endpoint_url_option, parse_pairs, progress_line, quiet_aws_logs
from smbyoc.cli.request_options import maybe_print_or_submit_transform, request_options
from smbyoc.cli.status_line import StatusDisplay, format_elapsed, stdout_to_stderr
from smbyoc.emulator import job_logs
from smbyoc.emulator.transform.engine import Progress
from smbyoc.emulator.transform.spec import (
    ASSEMBLE_WITH,
    DEFAULT_INVOCATIONS_MAX_RETRIES,
    DEFAULT_INVOCATIONS_TIMEOUT,
    JOIN_SOURCES,
    S3_DATA_TYPES,
)
from smbyoc.s3.staging import Staging

_SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
_STRATEGIES = ("SingleRecord", "MultiRecord")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class TransformDisplay(StatusDisplay):
    """The status line with the job's progress: objects and records done, records/s, ETA."""

    def __init__(self, job_name: str, hosts: int, *, err: TextIO | None = None, live: bool | None = None) -> None:
        super().__init__(job_name, hosts, err=err, live=live)
        self.progress: Progress | None = None

    def on_progress(self, progress: Progress) -> None:
        self.progress = progress

    def line(self) -> str:
        text = super().line()
        p = self.progress
        if p is None:
            return text
        rate = p.records_done / p.elapsed if p.elapsed > 0 else 0.0
        eta = "?"
        if p.bytes_done and p.bytes_total > p.bytes_done:
            eta = format_elapsed(p.elapsed * (p.bytes_total - p.bytes_done) / p.bytes_done)
        elif p.objects_done == p.objects_total:
            eta = "0:00"
        failed = f" ({p.objects_failed} failed)" if p.objects_failed else ""
        return (f"{text} | objects {p.objects_done}/{p.objects_total}{failed} | records {p.records_done} | "
                f"{rate:.0f} records/s | ETA {eta}")


def _choice(values: tuple[str, ...]) -> click.Choice[str]:
    return click.Choice(values, case_sensitive=True)


@click.command("local-transform")
@request_options("transform")
@click.option("--mode", type=click.Choice(["docker", "process"]), default="docker",
              help="docker: `docker run IMAGE serve` per instance; process: smbyoc's `serve` as local processes.")
@click.option("--image", metavar="IMAGE", help="Serving image (docker mode; default: smbyoc's CPU serve image).")
@click.option("--model-data", type=LOCATION, metavar="MODEL",
              help="model.tar.gz or a directory (or an s3:// URI), extracted to /opt/ml/model in every container.")
@click.option("--input", "input_path", type=LOCATION, required=True, metavar="PATH",
              help="A file, a directory (S3Prefix: every file below it) or a manifest (--s3-data-type ManifestFile); "
                   "or the same as an s3:// object, prefix or manifest.")
@click.option("--output", "output_dir", type=LOCATION, required=True, metavar="DIR",
              help="Where <object>.out files go, in the objects' relative folders (S3OutputPath: a directory or an "
                   "s3:// prefix, uploaded when the job ends).")
@click.option("--job-name", help="TransformJobName (default: generated).")
@click.option("--split-type", default="None", help=f"SplitType: {' | '.join(_SPLIT_TYPES)}.")
@click.option("--batch-strategy", help=f"BatchStrategy: {' | '.join(_STRATEGIES)} (default: /execution-parameters, "
                                       "else MultiRecord when records are split).")
@click.option("--compression", default="None", help="CompressionType: None | Gzip.")
@click.option("--content-type", help="ContentType sent with every request.")
@click.option("--accept", help="Accept sent with every request.")
@click.option("--assemble-with", type=_choice(ASSEMBLE_WITH), default="None",
              help="AssembleWith: None (outputs concatenated) or Line (a newline after each).")
@click.option("--max-payload", type=int, metavar="MB",
              help="MaxPayloadInMB, 0-100; 0: no limit, sent chunked (default: /execution-parameters, else 6).")
@click.option("--max-concurrent-transforms", type=int, metavar="N",
              help="Requests in flight per instance (default: /execution-parameters, else 1).")
@click.option("--instance-count", type=int, default=1, help="Instances; objects are shared among them.")
@click.option("--instance-type", default="local", help="ML instance type (CPU/memory limits in docker mode).")
@click.option("--input-filter", metavar="JSONPATH", help="DataProcessing InputFilter, e.g. '$[1:]'.")
@click.option("--output-filter", metavar="JSONPATH", help="DataProcessing OutputFilter, e.g. '$[0,-1]'.")
@click.option("--join-source", type=_choice(JOIN_SOURCES), default="None",
              help="DataProcessing JoinSource: Input joins each output with its input record.")
@click.option("--s3-data-type", type=_choice(S3_DATA_TYPES), default="S3Prefix",
              help="S3Prefix: --input is a file or directory; ManifestFile: a manifest naming the objects.")
@click.option("--invocations-timeout", type=int, default=DEFAULT_INVOCATIONS_TIMEOUT, metavar="S",
              help="ModelClientConfig InvocationsTimeoutInSeconds (1-3600).")
@click.option("--invocations-max-retries", type=int, default=DEFAULT_INVOCATIONS_MAX_RETRIES, metavar="N",
              help="ModelClientConfig InvocationsMaxRetries (0-3): resends after a timeout, no answer, 5xx or 429.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable for the containers (CreateTransformJob Environment). Repeatable.")
@click.option("--startup-health-timeout", type=float, default=240.0,
              help="Seconds /ping may take to answer 200 after a container starts.")
@click.option("--user", metavar="UID[:GID]", help="Docker mode: run the containers as this user.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a DescribeTransformJob-shaped JSON result, alone on stdout.")
@endpoint_url_option
@library_errors
def local_transform(
    mode: str, image: str | None, model_data: str | None, input_path: str, output_dir: str,
    job_name: str | None, split_type: str, batch_strategy: str | None, compression: str, content_type: str | None,
    accept: str | None, assemble_with: str, max_payload: int | None, max_concurrent_transforms: int | None,
    instance_count: int, instance_type: str, input_filter: str | None, output_filter: str | None,
    join_source: str, s3_data_type: str, invocations_timeout: int, invocations_max_retries: int,
    env_pairs: tuple[str, ...], startup_health_timeout: float, user: str | None, as_json: bool,
    endpoint_url: str | None,
) -> None:
    """Run a batch transform job as SageMaker would: every input object through /invocations, one
    <object>.out each. Ctrl-C stops it like StopTransformJob. The instances' lines also go to
    <smbyoc state dir>/logs/transform-job-JOB_NAME.log (`smbyoc logs JOB_NAME`).

    \b
    Examples:
      smbyoc local-transform --model-data model.tar.gz --input data/ --output out/ \\
          --split-type Line --content-type text/csv --accept text/csv
      smbyoc local-transform --image my-algo --model-data ./model --input data.csv.gz --output out/ \\
          --compression Gzip --split-type Line --batch-strategy MultiRecord --max-payload 1
      smbyoc local-transform --mode process --model-data ./model --input data/ --output out/ \\
          --split-type Line --content-type text/csv --input-filter '$[1:]' --join-source Input \\
          --output-filter '$[0,-1]'
      smbyoc local-transform --model-data s3://my-bucket/jobs/j/output/model.tar.gz \\
          --input s3://my-bucket/batch/ --output s3://my-bucket/batch-out/ --split-type Line
    """
    if maybe_print_or_submit_transform():
        return
    from smbyoc.emulator.job_spec import default_job_name
    from smbyoc.emulator.transform.job import run_transform_job
    from smbyoc.emulator.transform.spec import TransformJobSpec

    quiet_aws_logs()
    # s3:// locations become local paths before the job (the output's bucket first) and the .out files are
    # uploaded after it; the transform engine only sees local paths.
    with Staging(endpoint_url=endpoint_url, progress=progress_line) as staging:
        output = staging.output(output_dir, what="--output")
        spec = TransformJobSpec(
            job_name=job_name or default_job_name("smbyoc-transform"),
            model_data=None if model_data is None else staging.model(model_data, what="--model-data"),
            input_path=staging.input(input_path, what="--input", data_type=s3_data_type), output_dir=output,
            mode="process" if mode == "process" else "docker", image=image, split_type=split_type,
            batch_strategy=batch_strategy, compression=compression, content_type=content_type, accept=accept,
            assemble_with=assemble_with, max_payload_mb=max_payload,
            max_concurrent_transforms=max_concurrent_transforms, instance_count=instance_count,
            instance_type=instance_type, input_filter=input_filter, output_filter=output_filter,
            join_source=join_source, s3_data_type=s3_data_type, invocations_timeout=invocations_timeout,
            invocations_max_retries=invocations_max_retries, environment=dict(parse_pairs(env_pairs, "--env")),
            startup_health_timeout=startup_health_timeout, user=user,
        ).validate()
        display = TransformDisplay(spec.job_name, spec.instance_count)
        run_log = job_logs.RunLog(job_logs.TRANSFORM)

        def sink(host: str, line: str) -> None:
            run_log.sink(host, line)
            display.log_line(host, line)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            with stdout_to_stderr() if as_json else contextlib.nullcontext():
                run_log.start(spec.job_name)
                display.start()
                result = run_transform_job(spec, on_status=display.on_status, on_progress=display.on_progress,
                                           sink=sink)
        finally:
            signal.signal(signal.SIGTERM, previous)
            display.close()
            run_log.close()
        staging.publish()
        if as_json:
            click.echo(json.dumps(staging.restore_uris(result.to_dict()), indent=2))
        else:
            done = sum(1 for o in result.objects if o.output is not None)
            line = (f"{spec.job_name}: {result.status}: {done} of {len(result.objects)} object(s), "
                    f"{result.records} record(s) -> {staging.uri_of(spec.output_dir)}")
            click.secho(line, fg="green" if result.succeeded else "red", err=True)
            if result.failure_reason:
                click.echo(f"FailureReason: {result.failure_reason}", err=True)
    if result.status == "Stopped":
        raise SystemExit(exit_codes.STOPPED)
    if not result.succeeded:
        raise SystemExit(exit_codes.FAILURE)


COMMANDS = [local_transform]
