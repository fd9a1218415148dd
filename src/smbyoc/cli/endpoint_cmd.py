"""``smbyoc endpoint``: a running ``local-serve --endpoint-config`` endpoint, seen and changed from outside, as
DescribeEndpoint and UpdateEndpointWeightsAndCapacities do."""

from __future__ import annotations

import json
from typing import Any

import click

from smbyoc.cli import library_errors
from smbyoc.errors import ConfigError, SmbyocError


def _running(name: str) -> dict[str, Any]:
    """The record of the running endpoint called ``name`` (its front's URL and control token)."""
    from smbyoc.emulator import jobs

    found = [r for r in jobs.records(jobs.ENDPOINT) if r.data.get("endpoint_name") == name and not r.orphaned]
    if not found:
        names = sorted({str(r.data["endpoint_name"]) for r in jobs.records(jobs.ENDPOINT)
                        if r.data.get("endpoint_name") and not r.orphaned})
        known = f" (running: {', '.join(names)})" if names else " (none is running)"
        raise ConfigError(f"no running endpoint has this name{known}", key=f"endpoint {name!r}")
    return found[0].data


def _call(name: str, method: str, path: str, payload: Any = None) -> Any:
    from smbyoc.emulator import runtime_client
    from smbyoc.emulator.front import CONTROL_TOKEN_HEADER

    record = _running(name)
    body = None if payload is None else json.dumps(payload).encode()
    headers = {CONTROL_TOKEN_HEADER: str(record.get("control_token", ""))}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        answer = runtime_client.request(str(record["url"]), method, f"/_smbyoc/endpoints/{name}{path}", body,
                                        headers, timeout=30)
    except OSError as e:
        raise SmbyocError(f"endpoint {name}: its front at {record['url']} does not answer: {e}") from e
    error = runtime_client.platform_error_of(answer)
    if error is not None:
        raise error
    return json.loads(answer.body or b"null")


@click.group("endpoint")
def endpoint() -> None:
    """Describe or change a running endpoint (local-serve --endpoint-config).

    \b
    Examples:
      smbyoc endpoint describe my-endpoint
      smbyoc endpoint update-weights my-endpoint champion=1 challenger=3
    """


@endpoint.command("describe")
@click.argument("name")
@library_errors
def describe(name: str) -> None:
    """Print DescribeEndpoint's answer as JSON, with per-variant statistics (invocations, errors, latency).

    \b
    Example:
      smbyoc endpoint describe my-endpoint
    """
    click.echo(json.dumps(_call(name, "GET", ""), indent=2))


@endpoint.command("update-weights")
@click.argument("name")
@click.argument("weights", nargs=-1, required=True, metavar="VARIANT=WEIGHT...")
@library_errors
def update_weights(name: str, weights: tuple[str, ...]) -> None:
    """Change variant weights at once, like UpdateEndpointWeightsAndCapacities (no container restarts).

    \b
    Example:
      smbyoc endpoint update-weights my-endpoint champion=1 challenger=3    # 25 % / 75 %
    """
    desired = []
    for text in weights:
        variant, sep, value = text.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not variant or not 0 <= weight < float("inf"):
            raise ConfigError("expected VARIANT=WEIGHT with a weight of at least 0", key=text)
        desired.append({"VariantName": variant, "DesiredWeight": weight})
    _call(name, "POST", "/weights", {"DesiredWeightsAndCapacities": desired})
    click.echo(", ".join(f"{d['VariantName']}={d['DesiredWeight']:g}" for d in desired))


COMMANDS = [endpoint]
