"""The one place that creates boto3 clients and translates botocore's errors into smbyoc's.

Credentials come from boto3's standard chain, untouched: environment variables, the shared credentials and
config files (``AWS_PROFILE``), SSO, web identity, container and instance metadata. Endpoints follow boto3 as
well: an explicit ``endpoint_url`` wins, else ``AWS_ENDPOINT_URL_<SERVICE>`` / ``AWS_ENDPOINT_URL`` (read by
botocore itself), which is how an S3-compatible store (MinIO, moto, Ceph) is reached.

Every call into boto3 is wrapped in :func:`translate_aws_errors`, so a failure reaches the user as one
:class:`~smbyoc.errors.AwsError` line naming the action, never a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from smbyoc.errors import AwsError

#: Used when neither the caller, the environment nor the AWS config names a region.
DEFAULT_REGION = "us-east-1"

CREDENTIAL_CHAIN = (
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials and ~/.aws/config, SSO, "
    "web identity, container or instance metadata"
)


def no_credentials(action: str) -> AwsError:
    return AwsError(f"{action}: no AWS credentials found in the credential chain ({CREDENTIAL_CHAIN})",
                    code="NoCredentials")


def session(*, region: str | None = None, profile: str | None = None) -> Any:
    """A ``boto3.Session`` (region: the argument, else the environment or config, else us-east-1)."""
    try:
        import boto3
    except ImportError as e:
        raise AwsError("boto3 is not installed; pip install 'smbyoc[s3]'") from e
    with translate_aws_errors("open an AWS session"):
        sess = boto3.Session(profile_name=profile) if profile else boto3.Session()
        if region or not sess.region_name:
            sess = boto3.Session(profile_name=profile, region_name=region or DEFAULT_REGION)
    return sess


def client(service: str, *, region: str | None = None, endpoint_url: str | None = None,
           profile: str | None = None, config: Mapping[str, Any] | None = None,
           require_credentials: bool = True) -> Any:
    """A boto3 client for ``service``.

    With ``require_credentials`` (the default) the credential chain is resolved now, so that a machine with
    no credentials gets one line before any transfer starts rather than a traceback in the middle of one.
    """
    sess = session(region=region, profile=profile)
    from botocore.config import Config

    if require_credentials:
        with translate_aws_errors(f"use {service}"):
            if sess.get_credentials() is None:
                raise no_credentials(f"use {service}")
    options: dict[str, Any] = {"retries": {"max_attempts": 3, "mode": "standard"}}
    options.update(config or {})
    with translate_aws_errors(f"create the {service} client"):
        return sess.client(service, endpoint_url=endpoint_url or None, config=Config(**options))


def error_code(error: BaseException) -> str | None:
    """The service's error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _endpoint_of(url: str) -> str:
    """``scheme://host[:port]`` of a request URL (the bucket, key and query of the failed request left out)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def translate(error: BaseException, action: str) -> AwsError:
    """The smbyoc error for a botocore/boto3 error raised while doing ``action``."""
    from botocore import exceptions as bx

    if isinstance(error, AwsError):
        return error
    if isinstance(error, bx.NoCredentialsError | bx.PartialCredentialsError):
        return no_credentials(action)
    if isinstance(error, bx.ProfileNotFound):
        return AwsError(f"{action}: {error}", code="ProfileNotFound")
    if isinstance(error, bx.NoRegionError):
        return AwsError(f"{action}: no region: pass --region or set AWS_REGION", code="NoRegion")
    if isinstance(error, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        url = _endpoint_of(str(getattr(error, "kwargs", {}).get("endpoint_url", "")))
        return AwsError(f"{action}: cannot reach {url or 'the endpoint'} (check --endpoint-url and the network)",
                        code="EndpointConnectionError")
    if isinstance(error, bx.ClientError):
        code = error_code(error) or "Error"
        message = error.response.get("Error", {}).get("Message") or str(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        suffix = f" (HTTP {status})" if status else ""
        return AwsError(f"{action}: {code}: {message}{suffix}", code=code)
    if isinstance(error, bx.ParamValidationError):
        return AwsError(f"{action}: {error}", code="ValidationError")
    if isinstance(error, bx.BotoCoreError):
        return AwsError(f"{action}: {error}")
    return AwsError(f"{action}: {error}")


@contextlib.contextmanager
def translate_aws_errors(action: str) -> Iterator[None]:
    """``with translate_aws_errors("download s3://b/k"): ...`` — raises AwsError with one line."""
    from botocore import exceptions as bx

    try:
        yield
    except (bx.BotoCoreError, bx.ClientError) as e:
        raise translate(e, action) from e
