"""`smbyoc api` in process mode, driven by unmodified boto3 clients (``endpoint_url=``): train the bundled
default example, deploy its model, invoke it through the Runtime API, clean up; the service's errors; state kept
across a restart; StopTrainingJob; the token; Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from api_support import FAST, ROLE, clients, deploy, feature_rows, training_request
from helpers import wait_for_file
from smbyoc.api import store as stores
from smbyoc.api.server import ApiConfig, ApiServer

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def start_server(state: Path) -> ApiServer:
    server = ApiServer(ApiConfig(mode="process", port=0, state_dir=state, stop_timeout=5))
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path, nginx_on_path: str) -> Iterator[ApiServer]:
    api = start_server(tmp_path / "state")
    yield api
    api.close()


def error_of(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def raw(url: str, body: bytes, *, target: str = "SageMaker.ListModels", path: str = "/") -> tuple[int, Any]:
    """POST ``body`` as a JSON 1.1 request without botocore: (status, parsed answer)."""
    request = urllib.request.Request(url + path, data=body, headers={
        "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        assert e.headers["Content-Type"] == "application/x-amz-json-1.1"
        return e.code, json.loads(e.read())


def train(sm: Any, name: str, output: Path) -> dict[str, Any]:
    sm.create_training_job(**training_request(name, output))
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=FAST)
    described: dict[str, Any] = sm.describe_training_job(TrainingJobName=name)
    return described


def test_train_deploy_invoke_delete(server: ApiServer, tmp_path: Path) -> None:
    sm, runtime = clients(server.url)
    job = train(sm, "api-example", tmp_path / "out")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TrainingJobArn"] == "arn:aws:sagemaker:us-east-1:000000000000:training-job/api-example"
    model_data = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert model_data == (tmp_path / "out" / "api-example" / "output" / "model.tar.gz").as_uri()
    assert Path(model_data.removeprefix("file://")).is_file()
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert job["TrainingStartTime"] <= job["TrainingEndTime"]
    listed = sm.list_training_jobs(StatusEquals="Completed")["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == ["api-example"]

    deploy(sm, "api-example", model_data)
    assert sm.describe_endpoint(EndpointName="api-example")["EndpointStatus"] in ("Creating", "InService")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="api-example", WaiterConfig=FAST)
    described = sm.describe_endpoint(EndpointName="api-example")
    assert described["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["api-example"]
    assert sm.describe_model(ModelName="api-example")["PrimaryContainer"]["ModelDataUrl"] == model_data

    answer = runtime.invoke_endpoint(EndpointName="api-example", Body=feature_rows(2), ContentType="text/csv",
                                     Accept="application/json")
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    body = json.loads(answer["Body"].read())
    assert len(body["predictions"]) == 2, body
    # the container's own 4xx comes back as the Runtime API's ModelError
    code, message = error_of(runtime.invoke_endpoint, EndpointName="api-example", Body=b"a,b\n", ContentType="text/csv")
    assert code == "ModelError" and "CSV body has a header but no rows" in message
    # the endpoint name is matched with its case in InvokeEndpoint
    code, message = error_of(runtime.invoke_endpoint, EndpointName="API-example", Body=b"1", ContentType="text/csv")
    assert (code, message) == ("ValidationError", "Endpoint API-example of account 000000000000 not found.")

    sm.update_endpoint_weights_and_capacities(EndpointName="api-example", DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredWeight": 2.0}])
    assert sm.describe_endpoint(EndpointName="api-example")["ProductionVariants"][0]["CurrentWeight"] == 2.0
    code, message = error_of(sm.update_endpoint_weights_and_capacities, EndpointName="api-example",
                             DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
    assert code == "ValidationException" and "instance count" in message

    code, message = error_of(runtime.invoke_endpoint, EndpointName="api-example", Body=b"1" * (6 * 1024 * 1024 + 1),
                             ContentType="text/csv")
    assert (code, message) == ("ValidationError", "the request body has 6,291,457 bytes; the limit is 6,291,456 (6 MB)")

    front = server.hosting.front_url("api-example")
    assert front is not None
    sm.delete_endpoint(EndpointName="api-example")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="api-example", WaiterConfig=FAST)
    sm.delete_endpoint_config(EndpointConfigName="api-example")

    # batch transform with the same model: one .out per input object, next to where S3OutputPath says
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "rows.csv").write_text(feature_rows(5))
    sm.create_transform_job(
        TransformJobName="api-batch", ModelName="api-example",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": batch.as_uri()}},
                        "ContentType": "text/csv", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": (tmp_path / "batch-out").as_uri(), "Accept": "text/csv",
                         "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="api-batch", WaiterConfig=FAST)
    transform = sm.describe_transform_job(TransformJobName="api-batch")
    assert transform["TransformJobStatus"] == "Completed", transform.get("FailureReason")
    assert len((tmp_path / "batch-out" / "rows.csv.out").read_text().splitlines()) == 5
    code, message = error_of(sm.create_transform_job, TransformJobName="api-batch-2", ModelName="ghost",
                             TransformInput=transform["TransformInput"], TransformOutput=transform["TransformOutput"],
                             TransformResources=transform["TransformResources"])
    assert (code, message) == ("ValidationException",
                               'Could not find model "arn:aws:sagemaker:us-east-1:000000000000:model/ghost".')
    sm.delete_model(ModelName="api-example")
    assert sm.list_endpoints()["Endpoints"] == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the front and its `serve` stop after the answer
        try:
            urllib.request.urlopen(front + "/ping", timeout=2)
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the deleted endpoint's front still answers at {front}")


def test_errors_in_the_services_words(server: ApiServer, tmp_path: Path) -> None:
    sm, runtime = clients(server.url)
    request = training_request("bad_name", tmp_path / "out")
    request["AlgorithmSpecification"]["TrainingInputMode"] = "Files"
    code, message = error_of(sm.create_training_job, **request)
    assert code == "ValidationException"
    assert message == (
        "2 validation errors detected: Value 'bad_name' at 'trainingJobName' failed to satisfy constraint: Member "
        "must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}; Value 'Files' at "
        "'algorithmSpecification.trainingInputMode' failed to satisfy constraint: Member must satisfy enum value "
        "set: [Pipe, File, FastFile]")
    request = training_request("x", tmp_path / "out")
    request["HyperParameters"]["h" * 257] = "1"
    code, message = error_of(sm.create_training_job, **request)
    assert code == "ValidationException" and message.startswith("1 validation error detected: Value '" + "h" * 257)
    assert message.endswith("at 'hyperParameters." + "h" * 257 + ".key' failed to satisfy constraint: Member must "
                            "have length less than or equal to 256")
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []  # nothing created

    assert error_of(sm.describe_training_job, TrainingJobName="nope") == (
        "ValidationException", "Requested resource not found.")
    assert error_of(sm.stop_training_job, TrainingJobName="nope") == (
        "ResourceNotFound", "Requested resource not found.")
    assert error_of(sm.describe_model, ModelName="nope") == (
        "ValidationException", 'Could not find model "arn:aws:sagemaker:us-east-1:000000000000:model/nope".')
    assert error_of(sm.delete_endpoint_config, EndpointConfigName="nope") == (
        "ValidationException", 'Could not find endpoint configuration '
                               '"arn:aws:sagemaker:us-east-1:000000000000:endpoint-config/nope".')
    assert error_of(sm.describe_endpoint, EndpointName="nope") == (
        "ValidationException", 'Could not find endpoint "arn:aws:sagemaker:us-east-1:000000000000:endpoint/nope".')
    assert error_of(runtime.invoke_endpoint, EndpointName="nope", Body=b"1", ContentType="text/csv") == (
        "ValidationError", "Endpoint nope of account 000000000000 not found.")
    # a configuration naming a model that does not exist, an endpoint naming a configuration that does not exist
    code, message = error_of(sm.create_endpoint_config, EndpointConfigName="cfg", ProductionVariants=[{
        "VariantName": "A", "ModelName": "ghost", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    assert (code, message) == ("ValidationException",
                               'Could not find model "arn:aws:sagemaker:us-east-1:000000000000:model/ghost".')
    assert error_of(sm.create_endpoint, EndpointName="ep", EndpointConfigName="cfg")[0] == "ValidationException"
    assert sm.list_endpoint_configs()["EndpointConfigs"] == [] and sm.list_endpoints()["Endpoints"] == []
    # duplicates
    model = {"ModelName": "m", "ExecutionRoleArn": ROLE,
             "PrimaryContainer": {"Image": "smbyoc/serve:cpu", "ModelDataUrl": str(tmp_path / "model.tar.gz")}}
    sm.create_model(**model)
    assert error_of(sm.create_model, **model) == (
        "ValidationException",
        'Cannot create already existing model "arn:aws:sagemaker:us-east-1:000000000000:model/m".')
    code, message = error_of(sm.create_model, **{**model, "ModelName": "M"})  # names are unique whatever their case
    assert code == "ValidationException" and message.startswith("Cannot create already existing model")
    # the wire protocol: the body must be a JSON object, the target SageMaker's, the route one the API has
    assert raw(server.url, b"[1]") == (400, {"__type": "SerializationException",
                                             "message": "the request body must be a JSON object"})
    assert raw(server.url, b"{", target="SageMaker.ListModels")[1]["__type"] == "SerializationException"
    assert raw(server.url, b"{}", target="Other.ListModels")[1]["__type"] == "UnknownOperationException"
    assert raw(server.url, b"{}", path="/nowhere")[0] == 404
    assert raw(server.url, b"{}", target="SageMaker.ListModels") == (200, {"Models": [{
        "ModelName": "m", "ModelArn": "arn:aws:sagemaker:us-east-1:000000000000:model/m",
        "CreationTime": sm.describe_model(ModelName="m")["CreationTime"].timestamp()}]})
    # an operation the server does not emulate
    code, message = error_of(sm.list_clusters)
    assert code == "UnknownOperationException" and "ListClusters is not emulated by smbyoc api" in message


def test_hostile_bodies_names_and_filters(server: ApiServer, tmp_path: Path) -> None:
    sm, _ = clients(server.url)
    # not JSON numbers, numbers beyond a double, nesting deeper than any request: refused, never a 500
    for body, words in ((b'{"MaxResults": NaN}', "NaN is not a JSON number"),
                        (b'{"MaxResults": -Infinity}', "-Infinity is not a JSON number"),
                        (b'{"MaxResults": 1e999}', "1e999 is out of the range of a number"),
                        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64 levels"),
                        (b'{"NameContains": ' + b"[" * 900 + b"]" * 900 + b"}", "nests deeper than 64 levels")):
        status, answer = raw(server.url, body)
        assert (status, answer["__type"]) == (400, "SerializationException") and words in answer["message"], answer
    # a timestamp in any form botocore takes filters; anything else is one ValidationException naming the member
    model = {"ModelName": "m1", "ExecutionRoleArn": ROLE,
             "PrimaryContainer": {"Image": "smbyoc/serve:cpu", "ModelDataUrl": str(tmp_path / "model.tar.gz")}}
    sm.create_model(**model)
    for after, names in (("2000-01-01T00:00:00Z", ["m1"]), ("Sat, 01 Jan 2000 00:00:00 GMT", ["m1"]),
                         ("946684800", ["m1"]), (946684800, ["m1"]), ("2100-01-01T00:00:00Z", []), (4102444800, [])):
        status, answer = raw(server.url, json.dumps({"CreationTimeAfter": after}).encode())
        assert status == 200 and [m["ModelName"] for m in answer["Models"]] == names, (after, answer)
    for after in ("1e400", "yesterday", "99999999999999999999", 1e300):
        status, answer = raw(server.url, json.dumps({"CreationTimeAfter": after}).encode(),
                             target="SageMaker.ListTrainingJobs")
        assert status == 400 and answer["__type"] == "ValidationException", answer
        assert answer["message"].startswith(f"Value '{after}' at 'creationTimeAfter' is not a timestamp"), answer
    # every List filters on the times it takes
    future = time.time() + 86_400
    assert sm.list_endpoint_configs(CreationTimeBefore=0)["EndpointConfigs"] == []
    assert sm.list_endpoints(LastModifiedTimeAfter=future)["Endpoints"] == []
    assert sm.list_transform_jobs(CreationTimeAfter=future)["TransformJobSummaries"] == []
    assert sm.list_processing_jobs(LastModifiedTimeBefore=0)["ProcessingJobSummaries"] == []
    # a page token is a position, never a negative one
    code, message = error_of(sm.list_models, NextToken="-1", MaxResults=1)
    assert (code, message) == ("ValidationException", "Invalid pagination token")
    # an empty S3 URI is not a local path (it was the server's working directory)
    request = training_request("empty-output", tmp_path / "out")
    request["OutputDataConfig"]["S3OutputPath"] = ""
    code, message = error_of(sm.create_training_job, **request)
    assert code == "ValidationException" and "at 'outputDataConfig.s3OutputPath' failed to satisfy" in message
    # a channel named '.' or '..' names no folder of its own
    request = training_request("dot-channel", tmp_path / "out")
    request["InputDataConfig"][0]["ChannelName"] = ".."
    code, message = error_of(sm.create_training_job, **request)
    assert code == "ValidationException" and "'..'" in message, message
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
    # a variant name used twice is refused when the configuration is created, not when an endpoint fails
    variant = {"VariantName": "A", "ModelName": "m1", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    code, message = error_of(sm.create_endpoint_config, EndpointConfigName="twice",
                             ProductionVariants=[variant, {**variant, "InitialVariantWeight": 2.0}])
    assert (code, message) == ("ValidationException", "Variant name 'A' is used more than once: variant names are "
                                                      "unique across production and shadow variants.")
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_failed_and_stopped_jobs_and_a_duplicate(server: ApiServer, tmp_path: Path) -> None:
    sm, _ = clients(server.url)
    code = tmp_path / "code"
    code.mkdir()
    (code / "fail.py").write_text(
        "import os\n"
        "base = os.environ.get('SAGEMAKER_BASE_DIR', '/opt/ml')\n"
        "open(os.path.join(base, 'output', 'failure'), 'w').write('ValueError: the data is wrong')\n"
        "raise SystemExit(3)\n")
    (code / "sleep.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
    sm.create_training_job(**training_request("fails", tmp_path / "out", program="fail.py", source_dir=code))
    sm.create_training_job(**training_request("sleeps", tmp_path / "out", program="sleep.py", source_dir=code))
    code_, message = error_of(sm.create_training_job, **training_request("Sleeps", tmp_path / "out"))
    assert code_ == "ResourceInUse" and "a training job with this name already exists" in message

    waiter = sm.get_waiter("training_job_completed_or_stopped")
    with pytest.raises(Exception, match="Failed"):
        waiter.wait(TrainingJobName="fails", WaiterConfig=FAST)
    failed = sm.describe_training_job(TrainingJobName="fails")
    assert failed["TrainingJobStatus"] == "Failed"
    assert failed["FailureReason"] == "AlgorithmError: ValueError: the data is wrong"

    deadline = time.monotonic() + 60
    while sm.describe_training_job(TrainingJobName="sleeps")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.stop_training_job(TrainingJobName="sleeps")
    assert sm.describe_training_job(TrainingJobName="sleeps")["TrainingJobStatus"] in ("Stopping", "Stopped")
    waiter.wait(TrainingJobName="sleeps", WaiterConfig=FAST)
    stopped = sm.describe_training_job(TrainingJobName="sleeps")
    assert stopped["TrainingJobStatus"] == "Stopped"
    code_, message = error_of(sm.stop_training_job, TrainingJobName="sleeps")
    assert (code_, message) == ("ValidationException",
                                "The request was rejected because the training job is in status Stopped.")


def test_restart_keeps_jobs_models_and_endpoints(tmp_path: Path, nginx_on_path: str) -> None:
    state = tmp_path / "state"
    first = start_server(state)
    try:
        sm, _ = clients(first.url)
        job = train(sm, "kept", tmp_path / "out")
        deploy(sm, "kept", job["ModelArtifacts"]["S3ModelArtifacts"])
        sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=FAST)
    finally:
        first.close()
    # a job the server was running when it died (its record as a killed server leaves it)
    store = stores.Store(state)
    store.load()
    store.put(stores.TRAINING_JOBS, "died", {**store.get(stores.TRAINING_JOBS, "kept"), "TrainingJobName": "died",
                                             "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"})

    second = start_server(state)
    try:
        sm, runtime = clients(second.url)
        again = sm.describe_training_job(TrainingJobName="kept")
        assert {k: again[k] for k in ("TrainingJobStatus", "ModelArtifacts", "CreationTime", "TrainingEndTime")} == \
            {k: job[k] for k in ("TrainingJobStatus", "ModelArtifacts", "CreationTime", "TrainingEndTime")}
        died = sm.describe_training_job(TrainingJobName="died")
        assert died["TrainingJobStatus"] == "Failed"
        assert died["FailureReason"].startswith("InternalServerError: the smbyoc api server stopped while the job")
        assert sm.describe_model(ModelName="kept")["ModelName"] == "kept"
        sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=FAST)
        answer = runtime.invoke_endpoint(EndpointName="kept", Body=feature_rows(1), ContentType="text/csv")
        assert answer["Body"].read()
    finally:
        second.close()


def test_cli_token_sigterm_and_restart(tmp_path: Path, nginx_on_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with --token: the token printed once, 0600; wrong, missing and right keys; SIGTERM while a job runs
    and an endpoint serves stops both (nothing registered is left) and exits 0; the next start (beyond loopback:
    the token is required without --token) describes the job Stopped and serves the endpoint again."""
    from smbyoc.emulator import jobs

    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "smbyoc-state"))  # the emulator's registry, for both
    ready, state = tmp_path / "url", tmp_path / "state"
    proc = subprocess.Popen([*SMBYOC, "api", "--mode", "process", "--port", "0", "--token", "--state-dir",
                             str(state), "--ready-file", str(ready), "--stop-timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_file(ready, proc, 60), proc.communicate(timeout=30)
        url = ready.read_text().strip()
        token_file = state / "token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        sm, runtime = clients(url, key="wrong")
        assert error_of(sm.list_training_jobs) == ("UnrecognizedClientException",
                                                   "The security token included in the request is invalid.")
        assert error_of(runtime.invoke_endpoint, EndpointName="x", Body=b"1")[0] == "UnrecognizedClientException"
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(urllib.request.Request(url + "/", data=b"{}", headers={
                "X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"}), timeout=10)
        assert unsigned.value.code == 403
        sm, _ = clients(url, key=token)
        job = train(sm, "cli-example", tmp_path / "out")
        deploy(sm, "cli-example", job["ModelArtifacts"]["S3ModelArtifacts"])
        sm.get_waiter("endpoint_in_service").wait(EndpointName="cli-example", WaiterConfig=FAST)
        code = tmp_path / "code"
        code.mkdir()
        (code / "sleep.py").write_text("import time\ntime.sleep(600)\n")
        sm.create_training_job(**training_request("cli-sleeps", tmp_path / "out", program="sleep.py",
                                                  source_dir=code))
        deadline = time.monotonic() + 60
        while sm.describe_training_job(TrainingJobName="cli-sleeps")["SecondaryStatus"] != "Training":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        fronts = [r.data["url"] for r in jobs.records(jobs.ENDPOINT) if "url" in r.data]  # front and `serve`
        assert fronts and len(jobs.records(jobs.TRAINING)) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert err.count(token) == 1, err  # printed once
    assert not ready.exists()
    assert jobs.records() == []  # the job's process and the endpoint's `serve` were stopped and unregistered
    for front in fronts:
        with pytest.raises(OSError):
            urllib.request.urlopen(front + "/ping", timeout=5)

    proc = subprocess.Popen([*SMBYOC, "api", "--mode", "process", "--port", "0", "--host", "0.0.0.0",
                             "--state-dir", str(state), "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_file(ready, proc, 60), proc.communicate(timeout=30)
        sm, _ = clients(ready.read_text().strip(), key="wrong")
        assert error_of(sm.list_models)[0] == "UnrecognizedClientException"
        sm, runtime = clients(ready.read_text().strip(), key=token)
        assert sm.describe_training_job(TrainingJobName="cli-sleeps")["TrainingJobStatus"] == "Stopped"
        sm.get_waiter("endpoint_in_service").wait(EndpointName="cli-example", WaiterConfig=FAST)
        answer = runtime.invoke_endpoint(EndpointName="cli-example", Body=feature_rows(1), ContentType="text/csv")
        assert json.loads(answer["Body"].read())["predictions"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert token not in err and "Token required" in err
    assert jobs.records() == []


def test_stop_transform_job(server: ApiServer, tmp_path: Path) -> None:
    from transform_support import write_echo_model

    sm, _ = clients(server.url)
    model = write_echo_model(tmp_path / "echo")
    sm.create_model(ModelName="echo", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": "smbyoc/serve:cpu", "ModelDataUrl": str(model)})
    data = tmp_path / "slow"
    data.mkdir()
    (data / "slow.txt").write_text("SLOW\n" * 400)
    sm.create_transform_job(
        TransformJobName="slow", ModelName="echo", BatchStrategy="SingleRecord",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(data)}},
                        "ContentType": "text/plain", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": str(tmp_path / "slow-out")},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    deadline = time.monotonic() + 60
    while "TransformStartTime" not in sm.describe_transform_job(TransformJobName="slow"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.stop_transform_job(TransformJobName="slow")
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="slow", WaiterConfig=FAST)
    assert sm.describe_transform_job(TransformJobName="slow")["TransformJobStatus"] == "Stopped"
    assert not list((tmp_path / "slow-out").glob("*"))  # the unfinished object's .out is not left half-written
    assert error_of(sm.stop_transform_job, TransformJobName="slow")[0] == "ValidationException"


def test_killed_server_job_is_failed_and_its_process_removed(tmp_path: Path, nginx_on_path: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.emulator import jobs

    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "smbyoc-state"))
    ready, state = tmp_path / "url", tmp_path / "state"
    argv = [*SMBYOC, "api", "--mode", "process", "--port", "0", "--state-dir", str(state), "--ready-file", str(ready)]
    # the job's processes outlive a killed server: they must not hold the test's pipes
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    child = None
    try:
        assert wait_for_file(ready, proc, 60), (tmp_path / "server.log").read_text()
        sm, _ = clients(ready.read_text().strip())
        code = tmp_path / "code"
        code.mkdir()
        (code / "sleep.py").write_text("import time\ntime.sleep(600)\n")
        sm.create_training_job(**training_request("orphan", tmp_path / "out", program="sleep.py", source_dir=code))
        deadline = time.monotonic() + 60
        while not [r for r in jobs.records(jobs.TRAINING) if "child" in r.data]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        child = jobs.records(jobs.TRAINING)[0].data["child"]["pid"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    try:
        os.kill(child, 0)  # the job's program outlived the killed server
        ready.unlink()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        try:
            assert wait_for_file(ready, proc, 60), (tmp_path / "server.log").read_text()
            sm, _ = clients(ready.read_text().strip())
            died = sm.describe_training_job(TrainingJobName="orphan")
            assert died["TrainingJobStatus"] == "Failed"
            assert died["FailureReason"].startswith("InternalServerError: the smbyoc api server stopped")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        assert proc.returncode == 0, (tmp_path / "server.log").read_text()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # removed by the sweep at start (SIGTERM, then SIGKILL)
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                child = None
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the orphaned training process {child} is still running")
        assert jobs.records() == []
    finally:
        log.close()
        if child is not None:  # the test failed: end the orphan it made
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)


MODEL_CODE = '''
import os
import time


def model_fn(model_dir):
    return "{answer}"


def transform_fn(model, data, content_type, accept):
    raw = data if isinstance(data, bytes) else data.encode()
    if raw.startswith(b"sleep "):
        seconds = float(raw.split()[1])
        marks = os.environ.get("MARK_DIR")
        if marks:
            open(os.path.join(marks, "started-%g" % seconds), "w").close()
        time.sleep(seconds)
    return model.encode(), "text/plain"
'''


def answering_model(sm: Any, base: Path, name: str, answer: str, **environment: str) -> None:
    """CreateModel ``name``: a model (served by the real ``serve``) that answers ``answer`` to anything, after
    sleeping N seconds for ``sleep N`` (writing ``started-N`` under ``$MARK_DIR`` first)."""
    code = base / name / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(MODEL_CODE.replace("{answer}", answer))
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "smbyoc/serve:cpu", "ModelDataUrl": str(base / name),
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", **environment}})


def endpoint_config(sm: Any, name: str, model: str) -> None:
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])


def gone(url: str, seconds: float = 30) -> bool:
    """Whether nothing answers at ``url`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/ping", timeout=2)
        except OSError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def isolated_server(tmp_path: Path, nginx_on_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    """A server whose endpoints register in a registry of the test's own (``jobs.records()`` is the test's)."""
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "smbyoc-state"))
    api = start_server(tmp_path / "state")
    yield api
    api.close()


def test_update_endpoint_blue_green_retain_and_rollback(isolated_server: ApiServer, tmp_path: Path) -> None:
    """UpdateEndpoint starts the new configuration beside the serving one and switches once it is healthy: a
    client invoking all along gets an answer every time (old, then new); RetainAllVariantProperties keeps the
    weight; a new configuration that cannot start leaves the old one serving, InService with FailureReason."""
    import threading

    from smbyoc.emulator import jobs

    server = isolated_server
    sm, runtime = clients(server.url)
    answering_model(sm, tmp_path, "blue", "blue")
    answering_model(sm, tmp_path, "green", "green")
    endpoint_config(sm, "cfg-blue", "blue")
    endpoint_config(sm, "cfg-green", "green")
    sm.create_model(ModelName="gone", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "smbyoc/serve:cpu", "ModelDataUrl": str(tmp_path / "no-such-model")})
    endpoint_config(sm, "cfg-gone", "gone")
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="cfg-blue")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="ep", WaiterConfig=FAST)
    arn = "arn:aws:sagemaker:us-east-1:000000000000:endpoint/ep"

    answers: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def invoke_all_along() -> None:
        while not stop.is_set():
            try:
                answer = runtime.invoke_endpoint(EndpointName="ep", Body=b"x", ContentType="text/plain")
                answers.append(answer["Body"].read().decode())
            except Exception as e:
                errors.append(repr(e))

    def wait_in_service() -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while (described := sm.describe_endpoint(EndpointName="ep"))["EndpointStatus"] == "Updating":
            assert time.monotonic() < deadline, described
            time.sleep(0.2)
        return described

    # what is refused, before anything starts
    for extra, words in [
        ({"DeploymentConfig": {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
            "Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}}}}, "DeploymentConfig is not emulated"),
        ({"RetainAllVariantProperties": True,
          "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DataCaptureConfig"}]},
         "ExcludeRetainedVariantProperties DataCaptureConfig is not supported"),
        ({"ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"}]},
         "ExcludeRetainedVariantProperties needs RetainAllVariantProperties"),
    ]:
        code, message = error_of(sm.update_endpoint, EndpointName="ep", EndpointConfigName="cfg-green", **extra)
        assert code == "ValidationException" and words in message, message
    assert error_of(sm.update_endpoint, EndpointName="ep", EndpointConfigName="nope") == (
        "ValidationException", 'Could not find endpoint configuration '
                               '"arn:aws:sagemaker:us-east-1:000000000000:endpoint-config/nope".')
    assert error_of(sm.update_endpoint, EndpointName="nope", EndpointConfigName="cfg-green")[0] == \
        "ValidationException"
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"
    sm.create_endpoint(EndpointName="ep-failed", EndpointConfigName="cfg-gone")
    deadline = time.monotonic() + 60
    while sm.describe_endpoint(EndpointName="ep-failed")["EndpointStatus"] != "Failed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert error_of(sm.update_endpoint, EndpointName="ep-failed", EndpointConfigName="cfg-green") == (
        "ValidationException", 'Cannot update failed endpoint "arn:aws:sagemaker:us-east-1:000000000000:endpoint/'
                               'ep-failed"; DeleteEndpoint is the only operation on a failed endpoint.')
    sm.delete_endpoint(EndpointName="ep-failed")

    invoker = threading.Thread(target=invoke_all_along, daemon=True)
    invoker.start()
    try:
        sm.update_endpoint_weights_and_capacities(EndpointName="ep", DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredWeight": 3.0}])
        blue_front = server.hosting.front_url("ep")
        assert blue_front is not None
        assert sm.update_endpoint(EndpointName="ep", EndpointConfigName="cfg-green")["EndpointArn"] == arn
        described = sm.describe_endpoint(EndpointName="ep")
        assert described["EndpointStatus"] == "Updating"
        assert described["EndpointConfigName"] == "cfg-blue"
        assert described["PendingDeploymentSummary"]["EndpointConfigName"] == "cfg-green"
        assert error_of(sm.update_endpoint, EndpointName="ep", EndpointConfigName="cfg-green") == (
            "ValidationException", f'Cannot update in-progress endpoint "{arn}".')
        assert error_of(sm.update_endpoint_weights_and_capacities, EndpointName="ep", DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredWeight": 1.0}]) == (
            "ValidationException", f'Cannot update in-progress endpoint "{arn}".')
        described = wait_in_service()
        assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "cfg-green"
        assert "PendingDeploymentSummary" not in described and "FailureReason" not in described
        assert described["ProductionVariants"][0]["CurrentWeight"] == 1.0  # the new configuration's
        seen = len(answers)
        assert gone(blue_front), "the old endpoint's front still answers"
        deadline = time.monotonic() + 30
        while len(answers) < seen + 5:
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.05)
        assert answers[0] == "blue" and set(answers[seen:]) == {"green"}

        # RetainAllVariantProperties: back to cfg-blue, keeping the weight set meanwhile
        sm.update_endpoint_weights_and_capacities(EndpointName="ep", DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredWeight": 2.5}])
        sm.update_endpoint(EndpointName="ep", EndpointConfigName="cfg-blue", RetainAllVariantProperties=True)
        described = wait_in_service()
        assert described["EndpointConfigName"] == "cfg-blue"
        assert described["ProductionVariants"][0]["CurrentWeight"] == 2.5
        assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1

        # a configuration that cannot start: rolled back, the old one serves on
        blue_front = server.hosting.front_url("ep")
        sm.update_endpoint(EndpointName="ep", EndpointConfigName="cfg-gone")
        described = wait_in_service()
        assert described["EndpointStatus"] == "InService" and described["EndpointConfigName"] == "cfg-blue"
        assert described["FailureReason"].startswith("Update to endpoint configuration cfg-gone failed and was "
                                                     "rolled back: "), described["FailureReason"]
        assert "no-such-model" in described["FailureReason"]
        assert server.hosting.front_url("ep") == blue_front
        seen = len(answers)
        deadline = time.monotonic() + 30
        while len(answers) < seen + 5:
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.05)
        assert set(answers[seen:]) == {"blue"}
    finally:
        stop.set()
        invoker.join(60)
    assert errors == [], errors[:5]
    assert len(answers) > 20
    # a successful update clears the FailureReason of the rolled-back one
    sm.update_endpoint(EndpointName="ep", EndpointConfigName="cfg-green")
    described = wait_in_service()
    assert described["EndpointConfigName"] == "cfg-green" and "FailureReason" not in described

    front = server.hosting.front_url("ep")
    assert front is not None
    sm.delete_endpoint(EndpointName="ep")
    assert gone(front)
    deadline = time.monotonic() + 30
    while jobs.records():  # every `serve` of every fleet stopped and unregistered
        assert time.monotonic() < deadline, jobs.records()
        time.sleep(0.2)


def test_delete_endpoint_while_invocations_run(isolated_server: ApiServer, tmp_path: Path) -> None:
    """DeleteEndpoint as invocations run: it answers at once; an invocation that ends within the front's grace
    period gets its answer, a longer one an error answer (not a hang); nothing is left running."""
    import concurrent.futures

    from botocore.config import Config

    from smbyoc.emulator import jobs

    server = isolated_server
    sm, _ = clients(server.url)
    import boto3

    runtime = boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="x",
                           config=Config(retries={"max_attempts": 0}, read_timeout=120))
    marks = tmp_path / "marks"
    marks.mkdir()
    answering_model(sm, tmp_path, "slow", "done", MARK_DIR=str(marks))
    endpoint_config(sm, "slow", "slow")
    sm.create_endpoint(EndpointName="slow", EndpointConfigName="slow")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="slow", WaiterConfig=FAST)
    front = server.hosting.front_url("slow")
    assert front is not None

    def invoke(body: bytes) -> tuple[str, float]:
        try:
            answer = runtime.invoke_endpoint(EndpointName="slow", Body=body, ContentType="text/plain")
            return answer["Body"].read().decode(), time.monotonic()
        except ClientError as e:
            return f'{e.response["Error"]["Code"]}: {e.response["Error"]["Message"]}', time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        short = pool.submit(invoke, b"sleep 3")
        long = pool.submit(invoke, b"sleep 300")
        deadline = time.monotonic() + 30
        while not ((marks / "started-3").exists() and (marks / "started-300").exists()):
            assert time.monotonic() < deadline, "the invocations did not reach the model"
            time.sleep(0.05)
        started = time.monotonic()
        sm.delete_endpoint(EndpointName="slow")
        assert time.monotonic() - started < 5  # DeleteEndpoint does not wait for the invocations
        assert error_of(sm.describe_endpoint, EndpointName="slow")[0] == "ValidationException"
        short_answer, _ = short.result(timeout=60)
        long_answer, long_done = long.result(timeout=60)
    assert short_answer == "done"  # ended within the grace period
    assert long_answer.startswith("ServiceUnavailable: the endpoint slow cannot be reached"), long_answer
    assert long_done - started < 40  # cut off after the front's grace period, not at the model's 300 s
    assert gone(front)
    deadline = time.monotonic() + 60  # `serve` gets SIGTERM, its busy worker up to its graceful timeout (~25 s)
    while jobs.records():  # the `serve` (with its sleeping worker) stopped and unregistered
        assert time.monotonic() < deadline, jobs.records()
        time.sleep(0.2)
    assert sm.list_endpoints()["Endpoints"] == []
