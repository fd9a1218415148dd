"""``smbyoc local-serve`` and ``smbyoc invoke``: run an endpoint as SageMaker would, and call it."""

from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

from smbyoc.cli import library_errors
from smbyoc.cli.options import LOCATION, endpoint_url_option, parse_pairs, progress_line, quiet_aws_logs
from smbyoc.cli.request_options import maybe_print_or_submit_endpoint, request_options
from smbyoc.emulator.endpoint import EndpointSpec
from smbyoc.errors import ConfigError, ServingError
from smbyoc.s3.staging import Staging
from smbyoc.s3.uri import is_s3_uri

if TYPE_CHECKING:
    from smbyoc.emulator.hosted_endpoint import HostedEndpoint
    from smbyoc.emulator.multi_container import MultiContainerEndpoint
    from smbyoc.emulator.multi_model import MultiModelEndpoint


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C or SIGTERM: stop the endpoint. The ones after it must not cut that cleanup short (a
    container or a temporary tree would be left): they are said and otherwise ignored."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _while_stopping)
    raise KeyboardInterrupt


def _while_stopping(signum: int, frame: FrameType | None) -> None:
    click.echo(f"{signal.Signals(signum).name}: the endpoint is being stopped and removed already; this exits "
               "once it is gone", err=True)


@click.command("local-serve")
@request_options("endpoint")
@click.option("--mode", type=click.Choice(["docker", "process"]), default="docker",
              help="docker: `docker run IMAGE serve`; process: run smbyoc's `serve` locally (nginx in front "
                   "when installed, else gunicorn alone with a warning).")
@click.option("--image", metavar="IMAGE", help="Serving image (docker mode; default: smbyoc's CPU serve image).")
@click.option("--model-data", type=LOCATION, metavar="MODEL",
              help="model.tar.gz or a directory, extracted to /opt/ml/model (default: the bundled example's "
                   "model, trained first if needed); an s3:// URI is downloaded through the cache.")
@click.option("--port", type=int, default=8080, help="Host port (127.0.0.1 only unless --bind-address).")
@click.option("--bind-address", default="127.0.0.1",
              help="Host address to publish on; 0.0.0.0 exposes the endpoint to the network.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable for the container (ContainerDefinition Environment). Repeatable.")
@click.option("--startup-health-timeout", type=float, default=240.0,
              help="Seconds /ping may take to answer 200 (ContainerStartupHealthCheckTimeoutInSeconds).")
@click.option("--instance-type", default="local", help="ML instance type (CPU/memory limits in docker mode).")
@click.option("--user", metavar="UID[:GID]", help="Docker mode: run the container as this user.")
@click.option("--ready-file", type=click.Path(path_type=Path),
              help="Write the endpoint URL to this file once /ping answers 200 (for scripts).")
@click.option("--require-nginx", is_flag=True,
              help="Process mode: fail when nginx is not installed instead of serving through gunicorn alone.")
@click.option("--multi-model", "multi_model", type=LOCATION, metavar="DIR",
              help="Serve a multi-model endpoint: DIR (or an s3:// prefix) holds the model .tar.gz files; each "
                   "invocation names one with --target-model, loaded on first use, least recently used unloaded "
                   "when the container runs out of memory.")
@click.option("--invocation-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Multi-model: seconds an invocation waits for its model to load before ModelNotReadyException.")
@click.option("--max-loaded-models", type=click.IntRange(min=0), default=0, show_default=True,
              help="Multi-model: the most models loaded at once, least recently used unloaded first (0: as many as "
                   "the container's memory allows, SageMaker's only limit).")
@click.option("--container", "container_texts", multiple=True, metavar="IMAGE[:MODEL]",
              help="A multi-container endpoint (2-15 containers in order, one per option; MODEL a path with a '/', "
                   "a file:// or an s3:// URI), or the long form image=IMG,model=PATH,hostname=NAME,env=K=V. "
                   "docs/multi-container.md.")
@click.option("--inference-execution-mode", type=click.Choice(["Serial", "Direct"]), default="Serial",
              show_default=True, help="Multi-container: chain the containers (Serial) or route each request to the "
                                      "one named by X-Amzn-SageMaker-Target-Container-Hostname (Direct).")
@click.option("--endpoint-config", type=click.Path(path_type=Path), metavar="FILE",
              help="Serve an endpoint described like CreateModel + CreateEndpointConfig requests (JSON or YAML): "
                   "production and shadow variants, data capture. docs/endpoint-config.md.")
@click.option("--endpoint-name", metavar="NAME",
              help="With --endpoint-config: the endpoint's name (default: the file's EndpointName, else its "
                   "EndpointConfigName).")
@click.option("--seed", type=int, help="With --endpoint-config: seed the traffic split and the sampling.")
@click.option("--serverless-idle-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="With --endpoint-config: seconds without a call before a serverless instance is stopped "
                   "(scale to zero; SageMaker does not publish its own).")
@click.option("--async-topic", "async_topics", multiple=True, metavar="ARN=TARGET",
              help="With --endpoint-config: what an SNS topic of NotificationConfig stands for: a JSON Lines file "
                   "(absolute path or file:// URI) or cmd:ARGV (the message on stdin). Default: "
                   "<state dir>/async/<endpoint>/notifications/<topic>.jsonl. Repeatable.")
@click.option("--async-input-root", "async_input_roots", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --endpoint-config: a directory a local InputLocation of InvokeEndpointAsync may be in "
                   "(links resolved; repeatable). Default: any file but /proc, /sys and /dev on a loopback "
                   "--bind-address; no local file beyond loopback.")
@endpoint_url_option
@library_errors
def local_serve(
    mode: str, image: str | None, model_data: str | None, port: int, bind_address: str,
    env_pairs: tuple[str, ...], startup_health_timeout: float, instance_type: str, user: str | None,
    ready_file: Path | None, require_nginx: bool, multi_model: str | None, invocation_timeout: float,
    max_loaded_models: int, container_texts: tuple[str, ...], inference_execution_mode: str,
    endpoint_config: Path | None, endpoint_name: str | None, seed: int | None, serverless_idle_timeout: float,
    async_topics: tuple[str, ...], async_input_roots: tuple[Path, ...], endpoint_url: str | None,
) -> None:
    """Serve a model as a SageMaker endpoint until Ctrl-C (SIGTERM, then SIGKILL after 30 s).

    \b
    Examples:
      smbyoc local-serve                                   # the bundled example's model
      smbyoc local-serve --image my-algo:latest --model-data model.tar.gz --port 8081
      smbyoc local-serve --mode process --model-data ./model
      smbyoc local-serve --mode process --require-nginx    # as in the image, or an error
      smbyoc local-serve --multi-model ./models            # then: smbyoc invoke --target-model a.tar.gz ...
      smbyoc local-serve --container smbyoc/preprocess:cpu:./prep --container my-algo:1:./model.tar.gz
      smbyoc local-serve --mode process --model-data s3://my-bucket/jobs/my-job/output/model.tar.gz
    """
    if maybe_print_or_submit_endpoint():
        return
    from smbyoc.emulator.endpoint import DockerEndpoint, Endpoint, ProcessEndpoint

    quiet_aws_logs()
    EndpointSpec(model_data=None, port=port, bind_address=bind_address,
                 environment=dict(parse_pairs(env_pairs, "--env")),
                 startup_health_timeout=startup_health_timeout, instance_type=instance_type).validate()
    if endpoint_config is not None:
        for given, option in ((model_data, "--model-data"), (image, "--image"), (multi_model, "--multi-model"),
                              (container_texts or None, "--container")):
            if given is not None:
                raise ConfigError("the endpoint configuration file names the images and models", key=option)
    elif endpoint_name is not None or seed is not None or async_topics or async_input_roots:
        raise ConfigError("only with --endpoint-config",
                          key="--endpoint-name" if endpoint_name else "--seed" if seed is not None else
                          "--async-topic" if async_topics else "--async-input-root")
    if multi_model is not None and model_data is not None:
        raise ConfigError("a multi-model endpoint takes its models from --multi-model DIR", key="--model-data")
    if container_texts:
        for given, option in ((model_data, "--model-data"), (image, "--image"), (multi_model, "--multi-model")):
            if given is not None:
                raise ConfigError("a multi-container endpoint takes its images and models from --container",
                                  key=option)
    # s3:// models are downloaded (through the cache) before anything starts; the endpoints see local paths.
    staging = Staging(endpoint_url=endpoint_url, progress=progress_line)
    local_model = None if model_data is None else staging.model(model_data, what="--model-data")
    if local_model is not None and not local_model.exists():
        raise ConfigError("no such file or directory", key=f"--model-data {model_data}")
    models_dir = None if multi_model is None else staging.model(multi_model, what="--multi-model")
    container_texts = tuple(stage_container_model(text, staging) for text in container_texts)
    spec = EndpointSpec(model_data=local_model, port=port, bind_address=bind_address,
                        environment=dict(parse_pairs(env_pairs, "--env")),
                        startup_health_timeout=startup_health_timeout, instance_type=instance_type).validate()
    previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    endpoint: Endpoint | MultiModelEndpoint | MultiContainerEndpoint | HostedEndpoint
    try:
        if endpoint_config is not None:
            endpoint = _hosted_endpoint(mode, spec, endpoint_config, endpoint_name, seed, user, require_nginx,
                                        serverless_idle_timeout, parse_pairs(async_topics, "--async-topic"), staging,
                                        async_input_roots)
        elif container_texts:
            endpoint = _multi_container_endpoint(mode, spec, container_texts, inference_execution_mode, user,
                                                 require_nginx)
        elif models_dir is not None:
            endpoint = _multi_model_endpoint(mode, spec, models_dir, image, user, require_nginx,
                                            invocation_timeout, max_loaded_models)
        elif mode == "process":
            if image is not None or user is not None:
                raise ConfigError("only for --mode docker", key="--image" if image else "--user")
            endpoint = ProcessEndpoint(spec, require_nginx=require_nginx)  # a missing nginx: said now
            if local_model is None:
                from smbyoc.emulator.default_model import default_model

                try:
                    endpoint.spec = _with_model(spec, default_model("process"))
                except BaseException:
                    endpoint.close()
                    raise
        else:
            if require_nginx:
                raise ConfigError("only for --mode process (images bring their own nginx)", key="--require-nginx")
            from smbyoc.docker.client import get_client

            client = get_client()
            if image is None:
                from smbyoc.images.defaults import ensure_default_image

                image = ensure_default_image(client, "serve", instance_type)
                if local_model is None:
                    from smbyoc.emulator.default_model import default_model

                    train_image = ensure_default_image(client, "train")
                    spec = _with_model(spec, default_model("docker", client, train_image))
            elif local_model is None:
                raise ConfigError("give the model for IMAGE with --model-data", key="--model-data")
            endpoint = DockerEndpoint(spec, client, image, user=user)
        what = (f"{endpoint_config}" if endpoint_config is not None
                else f"the models in {multi_model}" if multi_model is not None
                else f"{len(container_texts)} containers ({inference_execution_mode})" if container_texts
                else model_data if model_data is not None else spec.model_data)
        click.echo(f"Starting endpoint ({mode} mode) for {what}", err=True)
        try:
            seconds = endpoint.start()
        except KeyboardInterrupt:
            click.echo("Interrupted: endpoint stopped.", err=True)
            raise SystemExit(130) from None
        click.secho(f"Endpoint InService at {endpoint.url} ({seconds:.2f} s to the first 200 on /ping). "
                    "Ctrl-C stops it.", fg="green", err=True)
        if ready_file is not None:
            ready_file.write_text(endpoint.url + "\n")
        try:
            while (reason := endpoint._exit_reason()) is None:
                time.sleep(0.5)
            tail = endpoint.tail.text().strip()
            endpoint.close()
            detail = f"\nlast log lines:\n{tail}" if tail else ""
            raise ServingError(f"the endpoint stopped by itself: {reason}{detail}")
        except KeyboardInterrupt:
            click.echo("Stopping the endpoint (SIGTERM, then SIGKILL after 30 s)...", err=True)
            endpoint.close()
            click.echo("Endpoint stopped.", err=True)  # (exit 0: Ctrl-C is how a server is meant to end)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def _with_model(spec: EndpointSpec, model: Path) -> EndpointSpec:
    return replace(spec, model_data=model)


#: ``IMAGE:s3://...`` (short form) or ``model=s3://...`` (long form) in a ``--container`` value.
_S3_MODEL = re.compile(r"(?:(?<=:)|(?<=^)|(?<=,model=)|(?<=^model=))(s3://[^,]*)", re.IGNORECASE)


def stage_container_model(text: str, staging: Staging) -> str:
    """A ``--container`` value with its ``s3://`` model downloaded and replaced by the local path."""
    found = _S3_MODEL.search(text)
    if found is None or not is_s3_uri(found.group(1)):
        return text
    local = staging.model(found.group(1), what="--container")
    return text[:found.start(1)] + str(local.resolve()) + text[found.end(1):]


def _hosted_endpoint(mode: str, spec: EndpointSpec, path: Path, name: str | None, seed: int | None,
                     user: str | None, require_nginx: bool, serverless_idle_timeout: float,
                     topics: list[tuple[str, str]], staging: Staging | None = None,
                     async_input_roots: tuple[Path, ...] = ()) -> HostedEndpoint:
    from dataclasses import replace as with_name

    from smbyoc.emulator.endpoint_config import load_endpoint_config
    from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions

    definition = load_endpoint_config(path, staging=staging)
    if name is not None:
        definition = with_name(definition, endpoint_name=name)
    options = HostingOptions(mode=mode, port=spec.port, bind_address=spec.bind_address, user=user,
                             require_nginx=require_nginx, seed=seed, environment=tuple(spec.environment.items()),
                             serverless_idle_timeout=serverless_idle_timeout, topics=tuple(topics),
                             s3_endpoint_url=staging.endpoint_url if staging is not None else None,
                             async_input_roots=async_input_roots)
    if mode == "process":
        if user is not None:
            raise ConfigError("only for --mode docker", key="--user")
        return HostedEndpoint(definition, options)
    if require_nginx:
        raise ConfigError("only for --mode process (images bring their own nginx)", key="--require-nginx")
    from smbyoc.docker.client import get_client

    return HostedEndpoint(definition, options, client=get_client())


def _multi_container_endpoint(mode: str, spec: EndpointSpec, texts: tuple[str, ...], execution_mode: str,
                              user: str | None, require_nginx: bool) -> MultiContainerEndpoint:
    from smbyoc.emulator.multi_container import MultiContainerEndpoint, MultiContainerSpec, parse_container

    members = MultiContainerSpec(
        tuple(parse_container(text) for text in texts), execution_mode=execution_mode,
        backend="docker" if mode == "docker" else "process", port=spec.port, bind_address=spec.bind_address,
        environment=dict(spec.environment), startup_health_timeout=spec.startup_health_timeout,
        instance_type=spec.instance_type)
    if mode == "process":
        if user is not None:
            raise ConfigError("only for --mode docker", key="--user")
        return MultiContainerEndpoint(members, require_nginx=require_nginx)
    if require_nginx:
        raise ConfigError("only for --mode process (images bring their own nginx)", key="--require-nginx")
    from smbyoc.docker.client import get_client

    return MultiContainerEndpoint(members, client=get_client(), user=user)


def _multi_model_endpoint(mode: str, spec: EndpointSpec, models: Path, image: str | None, user: str | None,
                          require_nginx: bool, invocation_timeout: float, max_loaded: int) -> MultiModelEndpoint:
    from smbyoc.emulator.multi_model import MultiModelEndpoint, MultiModelSpec, default_multi_model_image

    mme = MultiModelSpec(spec, models, invocation_timeout=invocation_timeout, max_loaded=max_loaded)
    if mode == "process":
        if image is not None or user is not None:
            raise ConfigError("only for --mode docker", key="--image" if image else "--user")
        return MultiModelEndpoint(mme, require_nginx=require_nginx)
    if require_nginx:
        raise ConfigError("only for --mode process (images bring their own nginx)", key="--require-nginx")
    from smbyoc.docker.client import get_client

    client = get_client()
    return MultiModelEndpoint(mme, client=client, image=image or default_multi_model_image(client), user=user)


@click.command("invoke")
@click.argument("body", required=False)
@click.option("-f", "--file", "body_file", type=click.File("rb"), help="Read the body from a file ('-': stdin).")
@click.option("--url", default="http://127.0.0.1:8080", help="Endpoint URL (as printed by local-serve).")
@click.option("--content-type", default="application/json", help="Content-Type of the request.")
@click.option("--accept", help="Accept header (default: the container's default).")
@click.option("--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes (≤1024 ASCII characters).")
@click.option("--target-model", help="X-Amzn-SageMaker-Target-Model (multi-model endpoints).")
@click.option("--inference-id", help="X-Amzn-SageMaker-Inference-Id.")
@click.option("--target-container-hostname", metavar="HOSTNAME",
              help="X-Amzn-SageMaker-Target-Container-Hostname (multi-container endpoints in Direct mode).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, help="Seconds the model may take.")
@click.option("--no-limits", is_flag=True, help="Do not enforce SageMaker's 6 MB payload limits.")
@click.option("-i", "--include", is_flag=True, help="Print the status, Content-Type and custom attributes.")
@click.option("-o", "--output", type=click.File("wb"), help="Write the response body here instead of stdout.")
@library_errors
def invoke(
    body: str | None, body_file: IO[bytes] | None, url: str, content_type: str, accept: str | None,
    custom_attributes: str | None, target_model: str | None, inference_id: str | None,
    target_container_hostname: str | None, timeout: float, no_limits: bool, include: bool, output: IO[bytes] | None,
) -> None:
    """Call /invocations like InvokeEndpoint: 6 MB and 60 s limits, ModelError on a non-2xx answer.

    \b
    Examples:
      smbyoc invoke '[[5.1, 3.5, 1.4, 0.2]]'
      smbyoc invoke --content-type text/csv --accept text/csv '5.1,3.5,1.4,0.2'
      smbyoc invoke -f batch.npy --content-type application/x-npy -o out.json
      smbyoc invoke --target-model models/a.tar.gz '[[5.1, 3.5, 1.4, 0.2]]'   # a multi-model endpoint
    """
    from smbyoc.emulator.runtime_client import InvokeError
    from smbyoc.emulator.runtime_client import invoke as call

    if body is not None and body_file is not None:
        raise ConfigError("give the body as an argument or with --file, not both", key="BODY")
    if body is not None:
        data = body.encode("utf-8")
    elif body_file is not None:
        data = body_file.read()
    elif not sys.stdin.isatty():
        data = sys.stdin.buffer.read()
    else:
        raise ConfigError("give a body as an argument, with --file, or on standard input", key="BODY")
    try:
        response = call(url, data, content_type=content_type, accept=accept, custom_attributes=custom_attributes,
                        target_model=target_model, inference_id=inference_id,
                        target_container_hostname=target_container_hostname, enforce_limits=not no_limits,
                        timeout=timeout)
    except InvokeError as e:
        if e.original_status is not None:
            click.echo(f"OriginalStatusCode: {e.original_status}", err=True)
        raise
    if include:
        click.echo(f"HTTP {response.status}  Content-Type: {response.content_type}  "
                   f"({response.seconds * 1000:.1f} ms)", err=True)
        if response.custom_attributes:
            click.echo(f"X-Amzn-SageMaker-Custom-Attributes: {response.custom_attributes}", err=True)
    if output is not None:
        output.write(response.body)
    else:
        sys.stdout.buffer.write(response.body)
        if not response.body.endswith(b"\n") and sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()


COMMANDS = [local_serve, invoke]
