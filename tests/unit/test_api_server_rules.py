"""`smbyoc api`'s fast rules: requests checked in the service's words, the token, pagination, the config."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from smbyoc.api import token
from smbyoc.api.errors import ApiError
from smbyoc.api.server import ApiConfig
from smbyoc.api.training import page
from smbyoc.api.validation import check
from smbyoc.errors import ConfigError

ROLE = "arn:aws:iam::000000000000:role/r"


def model(**container: object) -> dict[str, object]:
    return {"ModelName": "m", "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": "smbyoc/serve:cpu", **container}}


def refusal(operation: str, params: dict[str, object]) -> str:
    with pytest.raises(ApiError) as caught:
        check(operation, params)
    assert caught.value.code == "ValidationException" and caught.value.status == 400
    return caught.value.message


def test_local_paths_and_file_uris_stand_for_s3_uris() -> None:
    check("CreateModel", model(ModelDataUrl="/tmp/model.tar.gz"))
    check("CreateModel", model(ModelDataUrl="file:///tmp/model.tar.gz"))
    check("CreateModel", model(ModelDataUrl="s3://bucket/model.tar.gz"))
    # an s3:// URI keeps its own pattern check
    assert "at 'primaryContainer.modelDataUrl' failed to satisfy constraint" in \
        refusal("CreateModel", model(ModelDataUrl="s3://"))


def test_constraints_in_the_services_words() -> None:
    config = {"EndpointConfigName": "c", "ProductionVariants": [
        {"VariantName": "A", "ModelName": "m", "InstanceType": "ml.nope", "InitialInstanceCount": 1,
         "InitialVariantWeight": 1.0}],
        "DataCaptureConfig": {"InitialSamplingPercentage": 150, "DestinationS3Uri": "s3://b/p",
                              "CaptureOptions": [{"CaptureMode": "Input"}]}}
    message = refusal("CreateEndpointConfig", config)
    assert message.startswith("2 validation errors detected: Value 'ml.nope' at "
                              "'productionVariants.1.member.instanceType' failed to satisfy constraint: Member must "
                              "satisfy enum value set: [")
    assert message.endswith("; Value 150 at 'dataCaptureConfig.initialSamplingPercentage' failed to satisfy "
                            "constraint: Member must have value less than or equal to 100")
    # one value breaking two rules: both said, as the service says them
    assert refusal("CreateEndpoint", {"EndpointName": "x" * 64, "EndpointConfigName": "c"}) == (
        f"2 validation errors detected: Value '{'x' * 64}' at 'endpointName' failed to satisfy constraint: Member "
        f"must have length less than or equal to 63; Value '{'x' * 64}' at 'endpointName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def test_what_botocore_refuses_is_said_in_botocores_words() -> None:
    assert refusal("CreateEndpoint", {"EndpointName": "e"}) == (
        'Parameter validation failed:\nMissing required parameter in input: "EndpointConfigName"')
    assert refusal("DescribeModel", {"ModelName": "m", "Extra": 1}).startswith(
        'Parameter validation failed:\nUnknown parameter in input: "Extra"')


def test_access_key_id_and_token_check() -> None:
    header = ("AWS4-HMAC-SHA256 Credential=abc123/20261201/us-east-1/sagemaker/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=00")
    assert token.access_key_id(header) == "abc123"
    assert token.access_key_id(None) is None and token.access_key_id("Basic x") is None
    token.check(None, None)  # no token required
    token.check("abc123", header)
    with pytest.raises(ApiError) as wrong:
        token.check("other", header)
    assert wrong.value.code == "UnrecognizedClientException"
    with pytest.raises(ApiError) as missing:
        token.check("abc123", None)
    assert (missing.value.code, missing.value.status) == ("MissingAuthenticationTokenException", 403)


def test_token_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    first, created = token.load_or_create(tmp_path / "state")
    assert created and len(first) == 40
    path = tmp_path / "state" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token.load_or_create(tmp_path / "state") == (first, False)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        token.load_or_create(tmp_path / "state")


def test_beyond_loopback_the_token_is_required() -> None:
    assert not ApiConfig().token_required
    assert ApiConfig(require_token=True).token_required
    assert ApiConfig(host="0.0.0.0").token_required
    with pytest.raises(ConfigError, match="--mode"):
        ApiConfig(mode="local")


def test_pages() -> None:
    items = [{"Name": f"n{i}", "CreationTime": float(i)} for i in range(5)]
    first = page(items, {"MaxResults": 2}, "Items", {"Name": "Name"})
    assert [i["Name"] for i in first["Items"]] == ["n4", "n3"] and first["NextToken"] == "2"
    last = page(items, {"MaxResults": 2, "NextToken": "4"}, "Items", {"Name": "Name"})
    assert [i["Name"] for i in last["Items"]] == ["n0"] and "NextToken" not in last
    by_name = page(items, {"SortBy": "Name", "SortOrder": "Ascending"}, "Items", {"Name": "Name"})
    assert [i["Name"] for i in by_name["Items"]] == ["n0", "n1", "n2", "n3", "n4"]
    for token_text in ("x", "-1"):
        with pytest.raises(ApiError, match="pagination token"):
            page(items, {"NextToken": token_text}, "Items", {})


def test_time_filters_take_every_form_botocore_sends_and_refuse_the_rest() -> None:
    from smbyoc.api.timestamps import parse, time_filtered

    assert parse(1577836800, "CreationTimeAfter") == parse("2020-01-01T00:00:00Z", "CreationTimeAfter") == \
        parse("Wed, 01 Jan 2020 00:00:00 GMT", "CreationTimeAfter") == parse("1577836800", "x") == 1577836800.0
    for bad in ("", "soon", "1e400", float("inf"), True, None, [1], 10**400):
        with pytest.raises(ApiError, match=r"at 'creationTimeAfter' is not a timestamp"):
            parse(bad, "CreationTimeAfter")
    items = [{"Name": "old", "CreationTime": 10.0, "LastModifiedTime": 50.0},
             {"Name": "new", "CreationTime": 30.0, "LastModifiedTime": 40.0}, {"Name": "no times"}]
    names = [[i["Name"] for i in time_filtered(items, request)] for request in (
        {}, {"CreationTimeAfter": 20}, {"CreationTimeBefore": 20}, {"LastModifiedTimeAfter": 45},
        {"LastModifiedTimeBefore": 45, "CreationTimeAfter": 10})]
    assert names == [["old", "new", "no times"], ["new"], ["old"], ["old"], ["new"]]


def test_timestamp_members_that_botocore_cannot_read_are_named() -> None:
    assert refusal("ListTrainingJobs", {"CreationTimeAfter": "1e400"}).startswith(
        "Value '1e400' at 'creationTimeAfter' is not a timestamp")
    check("ListTrainingJobs", {"CreationTimeAfter": "2020-01-01T00:00:00Z"})


def test_an_empty_s3_uri_is_left_to_the_services_pattern() -> None:
    assert "at 'primaryContainer.modelDataUrl' failed to satisfy constraint" in \
        refusal("CreateModel", model(ModelDataUrl=""))
