"""`local-serve --endpoint-config` in process mode: production variants with a weighted split (checked
statistically), TargetVariant, update-weights while running, a shadow variant that gets copies and never answers,
data capture read back field by field, all through unmodified boto3 and the `smbyoc endpoint` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import write_handler_model
from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def model(name: str, path: Path) -> dict[str, Any]:
    return {"ModelName": name, "PrimaryContainer": {"Image": "smbyoc/serve:cpu", "ModelDataUrl": str(path),
                                                    "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}}}


def variant(name: str, model_name: str, weight: float = 1.0, count: int = 1) -> dict[str, Any]:
    return {"VariantName": name, "ModelName": model_name, "InstanceType": "ml.m5.large",
            "InitialInstanceCount": count, "InitialVariantWeight": weight}


def capture_config(dest: Path) -> dict[str, Any]:
    return {"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": str(dest),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def start(document: dict[str, Any], tmp: Path, seed: int = 7) -> HostedEndpoint:
    definition = parse_endpoint_config(document, source=str(tmp / "endpoint.json"), base_dir=tmp)
    endpoint = HostedEndpoint(definition, HostingOptions(mode="process", port=free_port(), seed=seed),
                              sink=lambda line: None)
    endpoint.start()
    return endpoint


@pytest.fixture
def two_variants(tmp_path: Path, nginx_on_path: str, aws_env: None) -> Iterator[tuple[HostedEndpoint, Path]]:
    write_handler_model(tmp_path / "blue.tar.gz", "blue", 1.0, 0.0)
    write_handler_model(tmp_path / "green.tar.gz", "green", 10.0, 0.0)
    document = {
        "EndpointName": "split",
        "Models": [model("blue", tmp_path / "blue.tar.gz"), model("green", tmp_path / "green.tar.gz")],
        "EndpointConfig": {"EndpointConfigName": "split-config",
                           "ProductionVariants": [variant("Blue", "blue", 1.0), variant("Green", "green", 3.0, 2)],
                           "DataCaptureConfig": capture_config(tmp_path / "capture")},
    }
    endpoint = start(document, tmp_path)
    yield endpoint, tmp_path
    endpoint.close()


def invoke(client: Any, **extra: Any) -> dict[str, Any]:
    answer = client.invoke_endpoint(EndpointName="split", Body=b"[1]", ContentType="application/json", **extra)
    return {"variant": answer["InvokedProductionVariant"], "body": json.loads(answer["Body"].read())}


def test_weighted_split_target_variant_and_update_weights(two_variants: tuple[HostedEndpoint, Path]) -> None:
    import boto3

    endpoint, tmp = two_variants
    client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
    answers = [invoke(client, InferenceId=f"req-{i}") for i in range(400)]
    counts = Counter(a["variant"] for a in answers)
    # 400 draws at 1:3: Blue ~ Binomial(400, 0.25), mean 100, sd 8.7; ±4 sd
    assert 65 <= counts["Blue"] <= 135, counts
    assert counts["Blue"] + counts["Green"] == 400
    for a in answers:  # each answer came from its variant's own model
        assert a["body"]["code"] == a["variant"].lower()
    assert {invoke(client, TargetVariant="Blue")["variant"] for _ in range(20)} == {"Blue"}
    with pytest.raises(client.exceptions.ValidationError, match="TargetVariant Nope does not exist"):
        invoke(client, TargetVariant="Nope")

    # both Green instances served (least outstanding requests, ties in turn)
    described = json.loads(subprocess.run([*SMBYOC, "endpoint", "describe", "split"], capture_output=True,
                                          text=True, check=True, env=os.environ).stdout)
    green = next(v for v in described["ProductionVariants"] if v["VariantName"] == "Green")
    assert green["CurrentInstanceCount"] == 2 and green["CurrentWeight"] == 3.0
    assert green["Statistics"]["Invocations"] == counts["Green"]

    result = subprocess.run([*SMBYOC, "endpoint", "update-weights", "split", "Blue=1", "Green=0"],
                            capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert {invoke(client)["variant"] for _ in range(50)} == {"Blue"}
    refused = subprocess.run([*SMBYOC, "endpoint", "update-weights", "split", "Blue=0", "Green=0"],
                             capture_output=True, text=True, env=os.environ)
    assert refused.returncode != 0 and "At least one production variant" in refused.stderr
    missing = subprocess.run([*SMBYOC, "endpoint", "update-weights", "nope", "Blue=1"], capture_output=True,
                             text=True, env=os.environ)
    assert missing.returncode != 0 and "no running endpoint" in missing.stderr

    # capture: one record per call, per variant, read back field by field
    endpoint.capture.flush(10)
    records = [json.loads(line) for path in (tmp / "capture" / "split").rglob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(records) == 400 + 20 + 50
    first = next(r for r in records if r["eventMetadata"].get("inferenceId") == "req-0")
    assert first["captureData"]["endpointInput"] == {"observedContentType": "application/json", "mode": "INPUT",
                                                     "data": "[1]", "encoding": "JSON"}
    output = first["captureData"]["endpointOutput"]
    assert output["mode"] == "OUTPUT" and output["encoding"] == "JSON"
    assert json.loads(output["data"])["code"] in ("blue", "green")
    assert first["eventVersion"] == "0"
    variants = {p.relative_to(tmp / "capture" / "split").parts[0] for p in (tmp / "capture" / "split").rglob("*.jsonl")}
    assert variants == {"Blue", "Green"}


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and header lines, CRLF-ended, without the blank line) and ``body`` as they are."""
    import http.client
    import socket

    host, port = url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def test_hostile_headers_tokens_and_weights(two_variants: tuple[HostedEndpoint, Path]) -> None:
    import boto3

    endpoint, _ = two_variants
    client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
    # botocore's patterns, on the sync route as on the async one: ASCII types, printable ids of 1 or more
    for extra, words in (({"Accept": "\u00fc"}, "Accept: the value must be US-ASCII"),
                         ({"ContentType": "application/\u00fc"}, "Content-Type: the value must be US-ASCII"),
                         ({"InferenceId": "a\u00ffb"}, "Inference-Id: the value must be printable US-ASCII")):
        with pytest.raises(client.exceptions.ValidationError, match=words):
            client.invoke_endpoint(EndpointName="split", Body=b"[1]", **{"ContentType": "application/json", **extra})
    head = (b"POST /endpoints/split/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Amzn-SageMaker-Inference-Id: \r\n")
    status, headers, body = raw_request(endpoint.url, head, b"[1]")
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError"), body
    assert b"Inference-Id: the value is empty" in body
    with pytest.raises(client.exceptions.ValidationError, match="InvokeEndpointWithResponseStream is not emulated"):
        client.invoke_endpoint_with_response_stream(EndpointName="split", Body=b"[1]", ContentType="application/json")
    # the control routes: a token that is not even UTF-8 is a wrong token; weights out of range or named twice
    control = b"/_smbyoc/endpoints/split"
    status, headers, body = raw_request(endpoint.url, b"GET " + control + b" HTTP/1.1\r\nHost: x\r\n"
                                        b"X-Smbyoc-Control-Token: \xff\r\n")
    assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException"), body
    token = f"X-Smbyoc-Control-Token: {endpoint.control_token}\r\n".encode()
    for desired, words in (('[{"VariantName": "Blue", "DesiredWeight": 1' + "0" * 400 + "}]",
                            b"DesiredWeight is out of range"),
                           ('[{"VariantName": "Blue", "DesiredWeight": 1}, '
                            '{"VariantName": "Blue", "DesiredWeight": 2}]',
                            b"VariantName: Blue is given more than once")):
        status, headers, body = raw_request(endpoint.url, b"POST " + control + b"/weights HTTP/1.1\r\nHost: x\r\n" +
                                            token, f'{{"DesiredWeightsAndCapacities": {desired}}}'.encode())
        assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError") and words in body, body
    assert {v["VariantName"]: v["CurrentWeight"] for v in endpoint.describe()["ProductionVariants"]} == {
        "Blue": 1.0, "Green": 3.0}  # nothing changed


def test_shadow_gets_copies_and_never_answers(tmp_path: Path, nginx_on_path: str, aws_env: None) -> None:
    import boto3

    write_handler_model(tmp_path / "prod.tar.gz", "prod", 1.0, 0.0)
    write_handler_model(tmp_path / "candidate.tar.gz", "candidate", 2.0, 0.0)
    document = {
        "EndpointName": "shadowed",
        "Models": [model("prod", tmp_path / "prod.tar.gz"), model("candidate", tmp_path / "candidate.tar.gz")],
        "EndpointConfig": {"EndpointConfigName": "shadowed-config",
                           "ProductionVariants": [variant("Production", "prod")],
                           "ShadowProductionVariants": [variant("Shadow", "candidate")],
                           "DataCaptureConfig": capture_config(tmp_path / "capture")},
    }
    endpoint = start(document, tmp_path)
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        for i in range(30):
            answer = client.invoke_endpoint(EndpointName="shadowed", Body=b"[3]", ContentType="application/json",
                                            InferenceId=f"id-{i}")
            assert answer["InvokedProductionVariant"] == "Production"
            assert json.loads(answer["Body"].read()) == {"code": "prod", "prediction": [3.0]}
        with pytest.raises(client.exceptions.ValidationError):
            client.invoke_endpoint(EndpointName="shadowed", Body=b"[3]", TargetVariant="Shadow")
        deadline = time.monotonic() + 20
        assert endpoint.router is not None
        while endpoint.router.shadow_stats.sent < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert endpoint.router.shadow_stats.sent == 30 and endpoint.router.shadow_stats.dropped == 0
        endpoint.capture.flush(10)
        records: dict[str, dict[str, Any]] = {}
        for path in (tmp_path / "capture" / "shadowed").rglob("*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                variant_name = path.relative_to(tmp_path / "capture" / "shadowed").parts[0]
                records[f"{variant_name}/{record['eventMetadata']['inferenceId']}"] = record
        for i in range(30):  # the candidate's answer to the same request, beside production's
            prod = json.loads(records[f"Production/id-{i}"]["captureData"]["endpointOutput"]["data"])
            shadow = json.loads(records[f"Shadow/id-{i}"]["captureData"]["endpointOutput"]["data"])
            assert prod == {"code": "prod", "prediction": [3.0]}
            assert shadow == {"code": "candidate", "prediction": [6.0]}
        described = endpoint.describe()
        assert described["ShadowProductionVariants"][0]["Statistics"]["Invocations"] == 30
    finally:
        endpoint.close()


def test_sagemaker_sdk_predictor(two_variants: tuple[HostedEndpoint, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The SageMaker Python SDK's own Predictor, given a runtime client pointed at the front, unchanged."""
    import warnings

    import boto3

    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import JSONSerializer
        from sagemaker.session import Session

    endpoint, _ = two_variants
    boto_session = boto3.Session(region_name="us-east-1")
    session = Session(boto_session=boto_session,
                      sagemaker_runtime_client=boto_session.client("sagemaker-runtime", endpoint_url=endpoint.url))
    predictor = Predictor("split", sagemaker_session=session, serializer=JSONSerializer(),
                          deserializer=JSONDeserializer())
    assert predictor.predict([2, 3], target_variant="Green") == {"code": "green", "prediction": [20.0, 30.0]}
    assert predictor.predict([2], target_variant="Blue", inference_id="sdk-1") == {"code": "blue",
                                                                                  "prediction": [2.0]}
    assert predictor.predict([1])["code"] in ("blue", "green")


def test_serverless_variant_from_the_config(tmp_path: Path, nginx_on_path: str, aws_env: None) -> None:
    import boto3

    write_handler_model(tmp_path / "m.tar.gz", "sls", 3.0, 0.0)
    document = {
        "EndpointName": "sls",
        "Models": [model("m", tmp_path / "m.tar.gz")],
        "EndpointConfig": {"EndpointConfigName": "sls-config", "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": "m",
             "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 2}}]},
    }
    definition = parse_endpoint_config(document, source=str(tmp_path / "endpoint.json"), base_dir=tmp_path)
    endpoint = HostedEndpoint(definition, HostingOptions(mode="process", port=free_port(), seed=1,
                                                         serverless_idle_timeout=1.0), sink=lambda line: None)
    endpoint.start()
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        first = client.invoke_endpoint(EndpointName="sls", Body=b"[2]", ContentType="application/json")
        assert json.loads(first["Body"].read()) == {"code": "sls", "prediction": [6.0]}
        setup = first["ResponseMetadata"]["HTTPHeaders"]["x-smbyoc-model-setup-time-ms"]
        assert float(setup) > 0  # a cold start: the instance started for this call
        second = client.invoke_endpoint(EndpointName="sls", Body=b"[2]", ContentType="application/json")
        assert "x-smbyoc-model-setup-time-ms" not in second["ResponseMetadata"]["HTTPHeaders"]
        deadline = time.monotonic() + 20
        statistics: dict[str, Any] = {}
        while time.monotonic() < deadline:
            statistics = endpoint.describe()["ProductionVariants"][0]["Statistics"]
            if statistics["IdleStops"] >= 1:
                break
            time.sleep(0.2)
        assert statistics["IdleStops"] == 1 and statistics["CurrentInstances"] == 0, statistics
        third = client.invoke_endpoint(EndpointName="sls", Body=b"[1]", ContentType="application/json")
        assert "x-smbyoc-model-setup-time-ms" in third["ResponseMetadata"]["HTTPHeaders"]
    finally:
        endpoint.close()


SLOW_HANDLER = '''\
import json
import time


def model_fn(model_dir):
    return None


def transform_fn(model, data, content_type, accept):
    time.sleep(0.3)
    return json.dumps({"echo": json.loads(data)}), "application/json"
'''


def test_async_endpoint_survives_a_restart_mid_queue(tmp_path: Path, nginx_on_path: str, aws_env: None) -> None:
    """Requests accepted (202) while the endpoint stops are all answered after it starts again, once each."""
    import io
    import tarfile

    import boto3

    with tarfile.open(tmp_path / "slow.tar.gz", "w:gz") as tar:
        data = SLOW_HANDLER.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    document = {
        "EndpointName": "queued",
        "Models": [model("slow", tmp_path / "slow.tar.gz")],
        "EndpointConfig": {
            "EndpointConfigName": "queued-config", "ProductionVariants": [variant("AllTraffic", "slow")],
            "AsyncInferenceConfig": {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
                                     "OutputConfig": {"S3OutputPath": str(tmp_path / "out"),
                                                      "S3FailurePath": str(tmp_path / "failed")}},
        },
    }
    definition = parse_endpoint_config(document, source=str(tmp_path / "endpoint.json"), base_dir=tmp_path)
    options = HostingOptions(mode="process", port=free_port(), async_state_dir=tmp_path / "queue")
    inputs = []
    for i in range(8):
        path = tmp_path / "in" / f"{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps([i]))
        inputs.append(path)
    endpoint = HostedEndpoint(definition, options, sink=lambda line: None)
    endpoint.start()
    accepted: dict[str, str] = {}
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        for path in inputs:
            answer = client.invoke_endpoint_async(EndpointName="queued", InputLocation=str(path),
                                                  ContentType="application/json")
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 202
            accepted[answer["InferenceId"]] = answer["OutputLocation"]
        with pytest.raises(client.exceptions.ValidationError, match="asynchronous endpoint"):
            client.invoke_endpoint(EndpointName="queued", Body=b"[1]", ContentType="application/json")
    finally:
        endpoint.close()  # mid-queue: at most a few of the 8 (0.3 s each, one at a time) are done
    done_before = len(list((tmp_path / "out").glob("*.out"))) if (tmp_path / "out").exists() else 0
    assert done_before < 8
    restarted = HostedEndpoint(definition, HostingOptions(mode="process", port=free_port(),
                                                          async_state_dir=tmp_path / "queue"), sink=lambda line: None)
    restarted.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list((tmp_path / "out").glob("*.out"))) < 8:
            time.sleep(0.1)
    finally:
        restarted.close()
    outputs = sorted(json.loads(p.read_text())["echo"][0] for p in (tmp_path / "out").glob("*.out"))
    assert outputs == list(range(8))
    for location in accepted.values():
        assert Path(location.removeprefix("file://")).is_file()
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").iterdir())


def test_multi_model_variant_from_the_config(tmp_path: Path, nginx_on_path: str, aws_env: None) -> None:
    import boto3

    write_handler_model(tmp_path / "prefix" / "a.tar.gz", "a", 2.0, 0.0)
    write_handler_model(tmp_path / "prefix" / "deep" / "b.tar.gz", "b", 1.0, 1.0)
    document = {
        "EndpointName": "mme",
        "Models": [{"ModelName": "many", "PrimaryContainer": {"Image": "smbyoc/serve:cpu", "Mode": "MultiModel",
                                                               "ModelDataUrl": str(tmp_path / "prefix")}}],
        "EndpointConfig": {"EndpointConfigName": "mme-config", "ProductionVariants": [variant("AllTraffic", "many")]},
    }
    endpoint = start(document, tmp_path)
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        for target, expected_body in [("a.tar.gz", {"code": "a", "prediction": [4.0]}),
                                      ("deep/b.tar.gz", {"code": "b", "prediction": [3.0]})]:
            answer = client.invoke_endpoint(EndpointName="mme", Body=b"[2]", ContentType="application/json",
                                            TargetModel=target)
            assert json.loads(answer["Body"].read()) == expected_body
        with pytest.raises(client.exceptions.ValidationError, match="no model artifact"):
            client.invoke_endpoint(EndpointName="mme", Body=b"[2]", TargetModel="c.tar.gz")
    finally:
        endpoint.close()


def test_a_freely_chosen_front_port_taken_meanwhile_is_chosen_again(tmp_path: Path, nginx_on_path: str,
                                                                    aws_env: None) -> None:
    """The API picks the front's port with free_port(); an outgoing connection can take that ephemeral port before
    the front binds it. Such a port is chosen again; a port the user asked for is not (one clear error)."""
    import socket

    from smbyoc.errors import ServingError

    write_handler_model(tmp_path / "one.tar.gz", "one", 1.0, 0.0)
    document = {"EndpointName": "taken", "Models": [model("one", tmp_path / "one.tar.gz")],
                "EndpointConfig": {"EndpointConfigName": "taken-config",
                                   "ProductionVariants": [variant("Only", "one")]}}
    definition = parse_endpoint_config(document, source=str(tmp_path / "endpoint.json"), base_dir=tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        asked = HostedEndpoint(definition, HostingOptions(mode="process", port=taken), sink=lambda line: None)
        with pytest.raises(ServingError, match=f"cannot listen on 127.0.0.1:{taken}: .*address already in use"):
            asked.start()
        chosen = HostedEndpoint(definition, HostingOptions(mode="process", port=taken, port_is_free_choice=True),
                                sink=lambda line: None)
        chosen.start()
        try:
            assert chosen.options.port != taken and chosen.url.endswith(f":{chosen.options.port}")
            import boto3

            runtime = boto3.client("sagemaker-runtime", endpoint_url=chosen.url, region_name="us-east-1")
            answer = runtime.invoke_endpoint(EndpointName="taken", Body=b"[1]", ContentType="application/json")
            assert answer["InvokedProductionVariant"] == "Only"
        finally:
            chosen.close()
