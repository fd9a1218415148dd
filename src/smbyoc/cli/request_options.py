"""``--print-request`` and ``--submit`` for ``local-train``, ``local-serve`` and ``local-transform``: the same job as
SageMaker API requests (docs/sagemaker-requests.md).

A command takes them in two lines: the decorator ``@request_options("training")`` (right under
``@click.command``) adds the options and keeps them out of the command's own arguments, and the command's body
starts with ``if maybe_print_or_submit_training(): return``. The handler reads the command's parameters from the
click context, builds the requests with :mod:`smbyoc.api_requests`, prints them (``--print-request``) and/or sends
them (``--submit``), and returns True; without either option it returns False and the local job runs.
"""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from click.core import ParameterSource

from smbyoc import exit_codes
from smbyoc.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["training", "endpoint", "transform"]

_COMMON = ("print_request", "submit", "role_arn", "image_uri", "no_wait")
OPTION_NAMES: dict[str, tuple[str, ...]] = {
    "training": (*_COMMON, "output_path", "spot", "max_wait", "volume_size", "metric_definitions"),
    "endpoint": _COMMON,
    "transform": (*_COMMON, "output_path"),
}


def _options(kind: Kind) -> list[Callable[[F], F]]:
    image_help = ("ECR image SageMaker runs (default: --image)." if kind != "endpoint" else
                  "ECR image for the model (default: --image). With --endpoint-config: IMAGE=URI maps an image the "
                  "file names to its ECR URI (a plain URI when the file names one image). Repeatable.")
    options: list[Callable[[F], F]] = [
        click.option("--print-request", is_flag=True,
                     help="Print the SageMaker API request(s) that run this job on SageMaker, as JSON, checked offline "
                          "against botocore's service model; nothing runs locally. docs/sagemaker-requests.md."),
        click.option("--submit", is_flag=True,
                     help="Send the request(s) to SageMaker with boto3 (standard credential chain) and follow the job "
                          "(status and CloudWatch logs) until it ends; nothing runs locally."),
        click.option("--role-arn", metavar="ARN",
                     help="IAM role SageMaker assumes (RoleArn / ExecutionRoleArn); also SMBYOC_<COMMAND>_ROLE_ARN, "
                          "e.g. SMBYOC_LOCAL_TRAIN_ROLE_ARN."),
        click.option("--image-uri", metavar="URI", multiple=kind == "endpoint", help=image_help),
        click.option("--no-wait", is_flag=True, help="With --submit: return once SageMaker accepted the requests."),
    ]
    if kind != "endpoint":
        options.append(click.option(
            "--output-path", metavar="S3URI",
            help="S3OutputPath of the request (default: the command's output when it is an s3:// URI)."))
    if kind == "training":
        options += [
            click.option("--spot", is_flag=True,
                         help="EnableManagedSpotTraining (also on with --spot-interruption-after); needs --max-wait."),
            click.option("--max-wait", type=float, metavar="SECONDS",
                         help="StoppingCondition.MaxWaitTimeInSeconds of a spot job (at least --max-runtime)."),
            click.option("--volume-size", type=click.IntRange(min=1), default=30, metavar="GB",
                         help="ResourceConfig.VolumeSizeInGB of the request."),
            click.option("--metric-definition", "metric_definitions", multiple=True, metavar="NAME=REGEX",
                         help="AlgorithmSpecification.MetricDefinitions entry of the request. Repeatable."),
        ]
    return options


def request_options(kind: Kind) -> Callable[[F], F]:
    """Add the request options of ``kind`` to a click command (listed after its own options in ``--help``) and
    keep them out of its callback's arguments."""
    names = OPTION_NAMES[kind]

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name in names:
                kwargs.pop(name, None)
            return func(*args, **kwargs)

        def holder() -> None:
            """Collects the options' parameters."""

        collected: Callable[..., Any] = holder
        for option in reversed(_options(kind)):
            collected = option(collected)
        # click lists a command's parameters in the reverse order of __click_params__: these go last.
        wrapper.__click_params__ = [*collected.__click_params__,  # type: ignore[attr-defined]
                                    *getattr(func, "__click_params__", ())]
        return wrapper  # type: ignore[return-value]

    return decorate


# ------------------------------------------------------------------------------------------------- the handlers


def _wanted(ctx: click.Context) -> bool:
    return bool(ctx.params.get("print_request") or ctx.params.get("submit"))


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _output_path(params: Mapping[str, Any], own: str) -> Any:
    """``--output-path``, else the command's own output option when it names an S3 location."""
    from smbyoc.api_requests.locations import is_s3_location, uri_text

    if params.get("output_path"):
        return params["output_path"]
    given = params.get(own)
    return given if given is not None and is_s3_location(uri_text(given)) else None


def _emit(ctx: click.Context, requests: Any, region: str | None = None) -> bool:
    """Print and/or send ``requests`` (an :class:`~smbyoc.api_requests.calls.ApiRequests`)."""
    params = ctx.params
    if params.get("print_request"):
        click.echo(json.dumps(requests.to_document(), indent=2))
    if params.get("submit"):
        from smbyoc.api_requests.submit import Clients, submit
        from smbyoc.cli.options import quiet_aws_logs

        quiet_aws_logs()  # boto3's INFO lines (where credentials were found) stay out of the job's lines
        try:
            submit(requests, clients=Clients(region=region), echo=lambda line: click.echo(line, err=True),
                   follow=not params.get("no_wait"))
        except KeyboardInterrupt:
            raise SystemExit(exit_codes.STOPPED) from None
    return True


def maybe_print_or_submit_training(ctx: click.Context | None = None) -> bool:
    """``local-train --print-request/--submit``: CreateTrainingJob for the job the options describe."""
    ctx = ctx or click.get_current_context()
    if not _wanted(ctx):
        return False
    from smbyoc.api_requests.calls import ApiRequests
    from smbyoc.api_requests.training_job import training_job_request, training_spec_for_request
    from smbyoc.cli.options import parse_channel_settings, parse_pairs
    from smbyoc.emulator.job_spec import load_hyperparameters_argument, merge_hyperparameters
    from smbyoc.emulator.local_training import LocalTrainingJob

    p = ctx.params
    json_encode = bool(p.get("json_encode_hyperparameters"))
    base = load_hyperparameters_argument(p["hyperparameters_json"]) if p.get("hyperparameters_json") else {}
    channels = parse_pairs(p.get("channels") or (), "--channel")
    settings = [setting for option, field in (("input_modes", "input_mode"), ("distributions", "distribution"),
                                              ("compressions", "compression"), ("record_wrappers", "record_wrapper"),
                                              ("data_types", "data_type"))
                for setting in parse_channel_settings(p.get(option) or (), field)]
    job = LocalTrainingJob(
        image=p.get("image"),
        entry_point=p.get("entry_point"),
        train_command=tuple(shlex.split(p["train_command"])) if p.get("train_command") else None,
        channels=tuple((name, Path(text)) for name, text in channels),
        content_types=dict(parse_pairs(p.get("content_types") or (), "--content-type")),
        channel_settings=tuple(settings),
        hyperparameters=merge_hyperparameters(base, parse_pairs(p.get("hyperparameter_pairs") or (), "-H"),
                                              json_encode=json_encode),
        json_encode_hyperparameters=json_encode,
        job_name=p.get("job_name"),
        instance_type=p.get("instance_type") or "local",
        instance_count=p.get("instance_count", 1),
        environment=dict(parse_pairs(p.get("env_pairs") or (), "--env")),
        max_runtime_seconds=p.get("max_runtime"),
        network_isolation=bool(p.get("network_isolation")),
        spot_interruption_after=p.get("spot_interruption_after"),
    )
    spec = training_spec_for_request(job, source_dir=p.get("source_dir"))
    request = training_job_request(
        spec,
        role_arn=p.get("role_arn"),
        image_uri=p.get("image_uri") or p.get("image"),
        output_path=_output_path(p, "output_dir"),
        channel_uris=dict(channels),
        checkpoint_uri=p.get("checkpoint_s3_dir"),
        spot=bool(p.get("spot")),
        max_wait_seconds=p.get("max_wait"),
        volume_size_gb=p.get("volume_size") or 30,
        metric_definitions=parse_pairs(p.get("metric_definitions") or (), "--metric-definition"),
    )
    region = p.get("region") if "region" in p and _given(ctx, "region") else None
    return _emit(ctx, ApiRequests((("CreateTrainingJob", request),)), region)


def maybe_print_or_submit_transform(ctx: click.Context | None = None) -> bool:
    """``local-transform --print-request/--submit``: CreateModel + CreateTransformJob."""
    ctx = ctx or click.get_current_context()
    if not _wanted(ctx):
        return False
    import os

    from smbyoc.api_requests.transform_job import transform_job_requests
    from smbyoc.cli.options import parse_pairs
    from smbyoc.emulator.job_spec import default_job_name
    from smbyoc.emulator.transform.spec import TransformJobSpec

    p = ctx.params
    spec = TransformJobSpec(
        job_name=p.get("job_name") or default_job_name("smbyoc-transform"),
        model_data=None, input_path=Path(os.fspath(p["input_path"])), output_dir=Path(os.fspath(p["output_dir"])),
        split_type=p["split_type"], batch_strategy=p.get("batch_strategy"), compression=p["compression"],
        content_type=p.get("content_type"), accept=p.get("accept"), assemble_with=p["assemble_with"],
        max_payload_mb=p.get("max_payload"), max_concurrent_transforms=p.get("max_concurrent_transforms"),
        instance_count=p["instance_count"], instance_type=p["instance_type"], input_filter=p.get("input_filter"),
        output_filter=p.get("output_filter"), join_source=p["join_source"], s3_data_type=p["s3_data_type"],
        invocations_timeout=p["invocations_timeout"], invocations_max_retries=p["invocations_max_retries"],
        environment=dict(parse_pairs(p.get("env_pairs") or (), "--env")),
    )
    requests = transform_job_requests(
        spec, role_arn=p.get("role_arn"), image_uri=p.get("image_uri") or p.get("image"),
        input_uri=p["input_path"], output_path=_output_path(p, "output_dir"), model_data_uri=p.get("model_data"))
    return _emit(ctx, requests)


def maybe_print_or_submit_endpoint(ctx: click.Context | None = None) -> bool:
    """``local-serve --print-request/--submit``: CreateModel(s) + CreateEndpointConfig + CreateEndpoint, from
    ``--endpoint-config FILE`` or from ``--image``/``--model-data`` (or ``--multi-model``)."""
    ctx = ctx or click.get_current_context()
    if not _wanted(ctx):
        return False
    from smbyoc.api_requests.endpoint import endpoint_config_requests, model_endpoint_requests
    from smbyoc.cli.options import parse_pairs
    from smbyoc.emulator.job_spec import default_job_name

    p = ctx.params
    image_uris: tuple[str, ...] = tuple(p.get("image_uri") or ())
    if p.get("container_texts"):
        raise ConfigError("a multi-container endpoint goes to SageMaker from an --endpoint-config file "
                          "(docs/endpoint-config.md)", key="--container")
    if p.get("endpoint_config") is not None:
        for option, name in (("--model-data", "model_data"), ("--image", "image"), ("--multi-model", "multi_model")):
            if p.get(name) is not None:
                raise ConfigError("the endpoint configuration file names the images and models", key=option)
        requests = endpoint_config_requests(p["endpoint_config"], role_arn=p.get("role_arn"), image_uris=image_uris,
                                            endpoint_name=p.get("endpoint_name"))
    else:
        if len(image_uris) > 1 or any("=" in uri for uri in image_uris):
            raise ConfigError("IMAGE=URI and several URIs are for --endpoint-config files; give one URI",
                              key=f"--image-uri {image_uris[-1]}")
        multi = p.get("multi_model")
        requests = model_endpoint_requests(
            endpoint_name=p.get("endpoint_name") or default_job_name("smbyoc-endpoint"),
            role_arn=p.get("role_arn"),
            image_uri=image_uris[0] if image_uris else p.get("image"),
            model_data_uri=multi if multi is not None else p.get("model_data"),
            instance_type=p.get("instance_type") or "local",
            environment=dict(parse_pairs(p.get("env_pairs") or (), "--env")),
            multi_model=multi is not None,
            startup_health_timeout=p["startup_health_timeout"] if _given(ctx, "startup_health_timeout") else None,
        )
    return _emit(ctx, requests)
