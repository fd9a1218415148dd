"""``smbyoc api``: a local SageMaker API server backed by smbyoc's engines."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from smbyoc.cli import library_errors, sweep_before
from smbyoc.cli.options import endpoint_url_option, quiet_aws_logs


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback requires the token.")
@click.option("--port", type=int, default=8770, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--mode", type=click.Choice(["docker", "process"]), default="docker", show_default=True,
              help="docker: jobs and endpoints run their images as SageMaker does; process: smbyoc's own "
                   "`train` and `serve` runtimes as local processes (the requests' images are not run; nginx "
                   "from the host; no processing jobs).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where descriptions, logs and the token are kept (default: <smbyoc state dir>/api).")
@click.option("--token/--no-token", "require_token", default=False, show_default=True,
              help="Require the token (the access key id clients sign with) also on loopback.")
@click.option("--region", default="us-east-1", show_default=True, help="Region named in the ARNs.")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when a training job is stopped.")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the server's URL to FILE once it listens (for scripts).")
@endpoint_url_option
@library_errors
@sweep_before
def api(host: str, port: int, mode: str, state_dir: Path | None, require_token: bool, region: str,
        stop_timeout: float, ready_file: Path | None, endpoint_url: str | None) -> None:
    """Serve the SageMaker API locally: unmodified boto3 and SageMaker Python SDK code trains, deploys and
    invokes through it (CreateTrainingJob, CreateModel, CreateEndpointConfig, CreateEndpoint, InvokeEndpoint...).

    Point clients at it with endpoint_url=URL, or AWS_ENDPOINT_URL_SAGEMAKER=URL and
    AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=URL. Descriptions persist in the state directory: a restart keeps
    jobs, models, configurations and endpoints (endpoints that were in service start again). Ctrl-C stops
    every running job and endpoint. docs/api.md.

    \b
    Examples:
      smbyoc api                                   # http://127.0.0.1:8770, docker mode
      smbyoc api --mode process --port 0 --ready-file url.txt
      smbyoc api --host 0.0.0.0 --endpoint-url http://127.0.0.1:9000   # token required; S3 on MinIO
    """
    from smbyoc.api.server import ApiConfig, ApiServer

    quiet_aws_logs()
    config = ApiConfig(host=host, port=port, mode=mode, state_dir=state_dir, region=region,
                       require_token=require_token, s3_endpoint_url=endpoint_url, stop_timeout=stop_timeout)
    server = ApiServer(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            click.echo("Still stopping jobs and endpoints...", err=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        if server.token_created:
            click.echo(f"Access token (printed once; stored in {server.state_dir / 'token'}, mode 0600): "
                       f"{server.token}", err=True)
        elif server.token is not None:
            click.echo(f"Token required: the access key id must be the token in {server.state_dir / 'token'}",
                       err=True)
        click.echo(f"SageMaker API ({mode} mode) on {server.url}  state: {server.state_dir}", err=True)
        if ready_file is not None:
            ready_file.write_text(server.url + "\n")
        while not stop.wait(1.0):
            pass
        click.echo("Stopping: running training jobs and endpoints are stopped...", err=True)
    finally:
        server.close()
        for s, h in previous.items():
            signal.signal(s, h)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


COMMANDS = [api]
