"""ECR: the authorization token decoded (split on the first ':', nothing stripped) and the repository created
or updated through real boto3 against a real moto server (``aws_env``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from smbyoc.errors import AwsError
from smbyoc.push.credentials import RegistryCredentials, decode_ecr_token, password_from_stdin
from smbyoc.push.ecr import Ecr, RepositorySettings
from smbyoc.push.lifecycle import keep_last_policy


def token(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("password", [
    "plain", "with:colon", "::leading", "trailing::", "AWS:AWS", "SAWpasswordWSA", "S", " spaced ", "é-ü",
    "eyJwYXlsb2FkIjoiQUJDIn0=",
])
def test_token_password_survives_exactly(password: str) -> None:
    creds = decode_ecr_token(token(f"AWS:{password}"))
    assert creds == RegistryCredentials(username="AWS", password=password)


def test_token_splits_on_the_first_colon_only() -> None:
    # SDK v2 local mode's .strip("AWS:") would turn "AWS:SWAP:AWS" into "P" (contract-endpoints.md §8.1).
    assert decode_ecr_token(token("AWS:SWAP:AWS")).password == "SWAP:AWS"
    assert decode_ecr_token(token("other:pw")).username == "other"


@pytest.mark.parametrize(("raw", "why"), [
    ("not base64!", "not base64"), (token("no-colon"), "not 'user:password'"), (token("AWS:"), "user:password"),
    (base64.b64encode(b"\xff\xfe:x").decode(), "not base64 text"),
])
def test_bad_tokens_are_one_line(raw: str, why: str) -> None:
    with pytest.raises(AwsError, match=why):
        decode_ecr_token(raw)


def test_password_never_in_repr() -> None:
    assert "s3cret" not in repr(RegistryCredentials("u", "s3cret"))
    header = RegistryCredentials("AWS", "p:w").basic_header()
    assert base64.b64decode(header.removeprefix("Basic ")) == b"AWS:p:w"


@pytest.mark.parametrize(("text", "password"), [
    ("pw\n", "pw"), ("pw\r\n", "pw"), ("pw", "pw"), (" pw \n", " pw "), ("pw\n\n", "pw\n"),
])
def test_password_stdin_loses_one_newline_only(text: str, password: str) -> None:
    assert password_from_stdin(text) == password


def test_empty_password_stdin() -> None:
    with pytest.raises(Exception, match="--password-stdin: no password"):
        password_from_stdin("\n")


def _boto_ecr(url: str) -> Any:
    import boto3

    return boto3.client("ecr", region_name="us-east-1", endpoint_url=url)


def test_authorization_from_moto(aws_env: str) -> None:
    auth = Ecr().authorization()
    expected = _boto_ecr(aws_env).get_authorization_token()["authorizationData"][0]
    assert auth.proxy_endpoint == expected["proxyEndpoint"]
    assert auth.host == expected["proxyEndpoint"].removeprefix("https://")
    assert auth.credentials.auth_config() == {
        "username": "AWS", "password": base64.b64decode(expected["authorizationToken"]).decode().split(":", 1)[1]}


def test_create_with_settings_then_update_explicit_ones(aws_env: str) -> None:
    boto = _boto_ecr(aws_env)
    ecr = Ecr()
    lines: list[str] = []
    policy = keep_last_policy(7)
    assert ecr.ensure_repository("team/model", None, RepositorySettings(immutable_tags=True, lifecycle_policy=policy),
                                 lines.append) is True
    repo = boto.describe_repositories(repositoryNames=["team/model"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert json.loads(boto.get_lifecycle_policy(repositoryName="team/model")["lifecyclePolicyText"]) == \
        json.loads(policy)
    assert lines == ["created ECR repository team/model (scan on push on, tags immutable, lifecycle policy)"]

    # Existing: nothing asked, nothing changed.
    assert ecr.ensure_repository("team/model", None, RepositorySettings(), lines.append) is False
    repo = boto.describe_repositories(repositoryNames=["team/model"])["repositories"][0]
    assert (repo["imageTagMutability"], repo["imageScanningConfiguration"]["scanOnPush"]) == ("IMMUTABLE", True)
    # Existing: explicit settings applied.
    ecr.ensure_repository("team/model", None, RepositorySettings(scan_on_push=False, immutable_tags=False),
                          lines.append)
    repo = boto.describe_repositories(repositoryNames=["team/model"])["repositories"][0]
    assert (repo["imageTagMutability"], repo["imageScanningConfiguration"]["scanOnPush"]) == ("MUTABLE", False)


def test_default_repository_is_scanned_and_mutable(aws_env: str) -> None:
    assert Ecr().ensure_repository("plain", None, RepositorySettings()) is True
    repo = _boto_ecr(aws_env).describe_repositories(repositoryNames=["plain"])["repositories"][0]
    assert (repo["imageTagMutability"], repo["imageScanningConfiguration"]["scanOnPush"]) == ("MUTABLE", True)


def test_a_policy_the_service_refuses_leaves_no_repository(aws_env: str) -> None:
    # Bypasses the offline check on purpose: the server's refusal must undo the creation.
    bad = json.dumps({"rules": "not a list", "pad": "x" * 100})
    with pytest.raises(AwsError, match="^ECR PutLifecyclePolicy half: InvalidParameterException"):
        Ecr().ensure_repository("half", None, RepositorySettings(lifecycle_policy=bad))
    assert _boto_ecr(aws_env).describe_repositories()["repositories"] == []


def test_service_errors_are_one_line(aws_env: str) -> None:
    with pytest.raises(AwsError) as info:
        Ecr().put_lifecycle_policy("missing-repo", None, keep_last_policy(1))
    assert info.value.code == "RepositoryNotFoundException"
    assert str(info.value).startswith("ECR PutLifecyclePolicy missing-repo: RepositoryNotFoundException")
    assert Ecr().describe("missing-repo", None) is None
