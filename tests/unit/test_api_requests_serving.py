"""CreateModel + CreateTransformJob and CreateModel + CreateEndpointConfig + CreateEndpoint for local transform jobs
and endpoints (smbyoc.api_requests.transform_job, .endpoint; docs/sagemaker-requests.md).

Every request is checked with botocore's own validator, unmodified. Endpoint configuration files are the ones
``local-serve --endpoint-config`` serves (docs/examples/endpoints), with S3 URIs in place of the local paths. Each
bad input is one ConfigError line naming the option, or the file and the field path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import cli_runner, with_request_options
from smbyoc.api_requests.endpoint import endpoint_config_requests, model_endpoint_requests
from smbyoc.api_requests.transform_job import transform_job_requests
from smbyoc.cli.request_options import (
    maybe_print_or_submit_endpoint,
    maybe_print_or_submit_transform,
)
from smbyoc.emulator.transform.spec import TransformJobSpec
from smbyoc.errors import ConfigError

botocore_validate = pytest.importorskip("botocore.validate")
botocore_session = pytest.importorskip("botocore.session")

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "endpoints"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn-serve:2"
OTHER_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn-serve:3"
URI_MEMBERS = ("ModelDataUrl", "DestinationS3Uri", "S3OutputPath", "S3FailurePath")


def botocore_check(operation: str, request: Any) -> None:
    model = botocore_session.get_session().get_service_model("sagemaker")
    botocore_validate.validate_parameters(request, model.operation_model(operation).input_shape)


def botocore_check_all(document: dict[str, Any]) -> None:
    for operation, request in document.items():
        for one in request if isinstance(request, list) else [request]:
            botocore_check(operation, one)


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text



# ------------------------------------------------------------------------------------------------- transform


def transform_spec(**changes: Any) -> TransformJobSpec:
    base: dict[str, Any] = {
        "job_name": "churn-batch-1", "model_data": None, "input_path": Path("in"), "output_dir": Path("out"),
        "instance_type": "ml.m5.xlarge", "instance_count": 2, "split_type": "Line", "batch_strategy": "MultiRecord",
        "compression": "Gzip", "content_type": "text/csv", "accept": "text/csv", "assemble_with": "Line",
        "max_payload_mb": 6, "max_concurrent_transforms": 4, "input_filter": "$[1:]", "output_filter": "$[0,-1]",
        "join_source": "Input", "s3_data_type": "ManifestFile", "invocations_timeout": 120,
        "invocations_max_retries": 1, "environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
    }
    base.update(changes)
    return TransformJobSpec(**base)


def transforms(spec: TransformJobSpec | None = None, **options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"role_arn": ROLE, "image_uri": IMAGE, "input_uri": "s3://bucket/batch/manifest.json",
                            "output_path": "s3://bucket/batch-out", "model_data_uri": "s3://bucket/model.tar.gz"}
    base.update(options)
    return transform_job_requests(spec or transform_spec(), **base).to_document()


def test_a_transform_job_maps_every_field_and_passes_botocore() -> None:
    document = transforms()
    botocore_check_all(document)
    assert document["CreateModel"] == [{"ModelName": "churn-batch-1", "ExecutionRoleArn": ROLE, "PrimaryContainer": {
        "Image": IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz"}}]
    assert document["CreateTransformJob"] == {
        "TransformJobName": "churn-batch-1", "ModelName": "churn-batch-1", "MaxConcurrentTransforms": 4,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 120, "InvocationsMaxRetries": 1},
        "MaxPayloadInMB": 6, "BatchStrategy": "MultiRecord",
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile",
                                                           "S3Uri": "s3://bucket/batch/manifest.json"}},
                           "ContentType": "text/csv", "CompressionType": "Gzip", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": "s3://bucket/batch-out", "Accept": "text/csv", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
        "DataProcessing": {"InputFilter": "$[1:]", "OutputFilter": "$[0,-1]", "JoinSource": "Input"},
    }
    assert list(document) == ["CreateModel", "CreateTransformJob"]


def test_a_minimal_transform_leaves_the_defaults_to_sagemaker() -> None:
    spec = TransformJobSpec(job_name="t", model_data=None, input_path=Path("in"), output_dir=Path("out"),
                            instance_type="ml.c5.xlarge", model_name="my-model")
    document = transforms(spec, model_data_uri=None)
    botocore_check_all(document)
    assert document["CreateModel"][0] == {"ModelName": "my-model", "ExecutionRoleArn": ROLE,
                                          "PrimaryContainer": {"Image": IMAGE}}
    job = document["CreateTransformJob"]
    assert set(job) == {"TransformJobName", "ModelName", "TransformInput", "TransformOutput", "TransformResources"}


@pytest.mark.parametrize(("spec", "options", "expected"), [
    (None, {"input_uri": Path("data/in.csv")}, "--input: data/in.csv is a local path; SageMaker needs an s3:// URI"),
    (None, {"model_data_uri": "file:///models/m.tar.gz"},
     "--model-data: file:///models/m.tar.gz is a local path; SageMaker needs an s3:// URI"),
    (None, {"output_path": "out"}, "--output-path: out is a local path; SageMaker needs an s3:// URI"),
    (None, {"output_path": None}, "--output-path: required"),
    (None, {"role_arn": None}, "--role-arn: required"),
    (transform_spec(instance_type="local"), {}, "--instance-type local: has no SageMaker value"),
    (transform_spec(max_payload_mb=60, max_concurrent_transforms=2), {},
     "--max-concurrent-transforms 2 x --max-payload 60: MaxConcurrentTransforms x MaxPayloadInMB must not exceed 100"),
    (transform_spec(input_filter="$[1:"), {}, "--input-filter: "),
    (transform_spec(job_name="bad_name"), {}, "--job-name 'bad_name': expected 1-63 letters"),
    (None, {"image_uri": "churn-serve:2"},
     "CreateModel: PrimaryContainer.Image: 'churn-serve:2' is not an ECR image URI"),
    (None, {"input_uri": "gs://bucket/in"}, "--input: gs://bucket/in is not an S3 URI"),
])
def test_each_bad_transform_input_is_one_line(spec: TransformJobSpec | None, options: dict[str, Any],
                                              expected: str) -> None:
    text = error_of(lambda: transforms(spec, **options))
    assert text.startswith(expected), text


def test_print_request_from_local_transform_options() -> None:
    from smbyoc.cli.transform_cmd import local_transform

    command = with_request_options(local_transform, "transform", maybe_print_or_submit_transform)
    args = ["--image", IMAGE, "--model-data", "s3://bucket/model.tar.gz", "--input", "s3://bucket/in/part-1.csv",
            "--output", "s3://bucket/out", "--job-name", "cli-batch", "--split-type", "Line", "--content-type",
            "text/csv", "--instance-type", "ml.m5.large", "--max-payload", "1", "--role-arn", ROLE, "--print-request"]
    result = cli_runner().invoke(command, args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    botocore_check_all(document)
    job = document["CreateTransformJob"]
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bucket/in/part-1.csv"
    assert job["TransformOutput"]["S3OutputPath"] == "s3://bucket/out"
    assert job["MaxPayloadInMB"] == 1 and job["TransformResources"] == {"InstanceType": "ml.m5.large",
                                                                         "InstanceCount": 1}
    local = cli_runner().invoke(command, ["--input", "in", "--output", "out"])
    assert local.output == "LOCAL JOB\n"


# ------------------------------------------------------------------------------------------------- endpoints


def to_s3(value: Any) -> Any:
    """The document with an S3 URI in every member that holds a local path."""
    if isinstance(value, dict):
        return {k: (f"s3://my-bucket/{Path(v).name}" if k in URI_MEMBERS and isinstance(v, str) else to_s3(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [to_s3(v) for v in value]
    return value


def example(tmp_path: Path, name: str = "two-variants-shadow-capture.json", s3: bool = True,
            change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    document = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    document = to_s3(document) if s3 else document
    if change is not None:
        change(document)
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_two_variants_shadow_and_capture_from_the_example_file(tmp_path: Path) -> None:
    path = example(tmp_path)
    original = json.loads(path.read_text(encoding="utf-8"))
    document = endpoint_config_requests(path, image_uris=[IMAGE]).to_document()
    botocore_check_all(document)
    assert list(document) == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    models = document["CreateModel"]
    assert [m["ModelName"] for m in models] == ["churn-v1", "churn-v2"]
    assert [m["PrimaryContainer"]["Image"] for m in models] == [IMAGE, IMAGE]
    assert models[0]["PrimaryContainer"]["ModelDataUrl"] == "s3://my-bucket/churn-v1.tar.gz"
    for model, given in zip(models, original["Models"], strict=True):  # nothing else changed
        assert {**model, "PrimaryContainer": {**model["PrimaryContainer"], "Image": "x"}} == \
            {**given, "PrimaryContainer": {**given["PrimaryContainer"], "Image": "x"}}
    assert document["CreateEndpointConfig"] == original["EndpointConfig"]
    assert document["CreateEndpointConfig"]["ShadowProductionVariants"][0]["VariantName"] == "Shadow"
    assert document["CreateEndpointConfig"]["DataCaptureConfig"]["DestinationS3Uri"] == "s3://my-bucket/capture"
    assert document["CreateEndpoint"] == {"EndpointName": "churn", "EndpointConfigName": "churn-shadow-test"}


def test_two_production_variants_images_mapped_and_role_filled_in(tmp_path: Path) -> None:
    def two_variants(doc: dict[str, Any]) -> None:
        doc["Models"][1]["PrimaryContainer"]["Image"] = "churn:v2"
        for model in doc["Models"]:
            del model["ExecutionRoleArn"]
        config = doc["EndpointConfig"]
        shadow = config.pop("ShadowProductionVariants")[0]
        config["ProductionVariants"] += [{**shadow, "VariantName": "Challenger", "InitialVariantWeight": 0.25}]

    path = example(tmp_path, change=two_variants)
    document = endpoint_config_requests(path, role_arn=ROLE, endpoint_name="churn-ab",
                                        image_uris=[f"smbyoc/serve:cpu={IMAGE}", f"churn:v2={OTHER_IMAGE}"]
                                        ).to_document()
    botocore_check_all(document)
    assert [m["PrimaryContainer"]["Image"] for m in document["CreateModel"]] == [IMAGE, OTHER_IMAGE]
    assert [m["ExecutionRoleArn"] for m in document["CreateModel"]] == [ROLE, ROLE]
    assert [v["VariantName"] for v in document["CreateEndpointConfig"]["ProductionVariants"]] == \
        ["Production", "Challenger"]
    assert document["CreateEndpoint"] == {"EndpointName": "churn-ab", "EndpointConfigName": "churn-shadow-test"}


def test_serverless_and_async_examples(tmp_path: Path) -> None:
    for name in ("serverless.json", "async.json"):
        document = endpoint_config_requests(example(tmp_path, name), role_arn=ROLE, image_uris=[IMAGE]).to_document()
        botocore_check_all(document)
    assert document["CreateEndpointConfig"]["AsyncInferenceConfig"]["OutputConfig"] == {
        "S3OutputPath": "s3://my-bucket/outputs", "S3FailurePath": "s3://my-bucket/failures"}


def test_one_model_endpoint_and_a_multi_model_one() -> None:
    document = model_endpoint_requests(endpoint_name="churn-rt", role_arn=ROLE, image_uri=IMAGE,
                                       model_data_uri="s3://bucket/model.tar.gz", instance_type="ml.m5.large",
                                       environment={"SAGEMAKER_PROGRAM": "inference.py"},
                                       startup_health_timeout=300).to_document()
    botocore_check_all(document)
    assert document == {
        "CreateModel": [{"ModelName": "churn-rt", "ExecutionRoleArn": ROLE, "PrimaryContainer": {
            "Image": IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}}],
        "CreateEndpointConfig": {"EndpointConfigName": "churn-rt", "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": "churn-rt", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0,
            "ContainerStartupHealthCheckTimeoutInSeconds": 300}]},
        "CreateEndpoint": {"EndpointName": "churn-rt", "EndpointConfigName": "churn-rt"},
    }
    multi = model_endpoint_requests(endpoint_name="many", role_arn=ROLE, image_uri=IMAGE,
                                    model_data_uri=Path("s3://bucket/models/"), instance_type="ml.c5.xlarge",
                                    multi_model=True).to_document()
    botocore_check_all(multi)
    assert multi["CreateModel"][0]["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": "s3://bucket/models",
                                                           "Mode": "MultiModel"}


@pytest.mark.parametrize(("change", "options", "expected"), [
    (None, {}, "Models[0].PrimaryContainer.Image: 'smbyoc/serve:cpu' is not an ECR image URI"),
    (lambda d: d["Models"][0].pop("ExecutionRoleArn"), {"image_uris": [IMAGE]},
     "Models[0].ExecutionRoleArn: required: the IAM role SageMaker assumes"),
    (lambda d: d["Models"][1]["PrimaryContainer"].update(Image="other:1"), {"image_uris": [IMAGE]},
     "--image-uri " + IMAGE + ": the file names 2 images (other:1, smbyoc/serve:cpu); give IMAGE=URI for each"),
    (None, {"image_uris": [f"nope:1={IMAGE}"]}, "--image-uri nope:1=" + IMAGE + ": the file names no image 'nope:1'"),
    (lambda d: d["EndpointConfig"]["ShadowProductionVariants"][0].update(ModelName="churn-v3"), {"image_uris": [IMAGE]},
     "EndpointConfig.ShadowProductionVariants[0].ModelName: 'churn-v3' is not the ModelName of any of Models"),
    (lambda d: d["EndpointConfig"]["DataCaptureConfig"].update(InitialSamplingPercentage=150), {"image_uris": [IMAGE]},
     "EndpointConfig.DataCaptureConfig.InitialSamplingPercentage: 150 is above the maximum 100"),
    (lambda d: d["EndpointConfig"]["ProductionVariants"][0].update(InstanceType="local"), {"image_uris": [IMAGE]},
     "EndpointConfig.ProductionVariants[0].InstanceType: 'local' is not one of the"),
])
def test_each_bad_endpoint_file_is_one_line_naming_the_field(tmp_path: Path, change: Any, options: dict[str, Any],
                                                            expected: str) -> None:
    path = example(tmp_path, change=change)
    text = error_of(lambda: endpoint_config_requests(path, **options))
    prefix = "" if expected.startswith("--") else f"{path}: "
    assert text.startswith(prefix + expected), text


def test_a_local_path_in_the_file_is_named_with_its_field(tmp_path: Path) -> None:
    path = example(tmp_path, s3=False)
    text = error_of(lambda: endpoint_config_requests(path, image_uris=[IMAGE]))
    assert text == (f"{path}: Models[0].PrimaryContainer.ModelDataUrl: ./models/churn-v1.tar.gz is a local path; "
                    "SageMaker needs an s3:// URI")


@pytest.mark.parametrize(("args", "expected"), [
    (["--image", IMAGE, "--model-data", "model.tar.gz", "--instance-type", "ml.m5.large"],
     "Error: --model-data: model.tar.gz is a local path; SageMaker needs an s3:// URI\n"),
    (["--image", IMAGE, "--model-data", "s3://bucket/m.tar.gz"],
     "Error: --instance-type local: has no SageMaker value; give an ml.* instance type (e.g. ml.m5.large)\n"),
    (["--model-data", "s3://bucket/m.tar.gz", "--instance-type", "ml.m5.large"],
     "Error: --image-uri: required: the ECR image SageMaker runs (default: --image)\n"),
    (["--container", f"{IMAGE}:s3://b/m.tar.gz", "--container", f"{IMAGE}:s3://b/n.tar.gz"],
     "Error: --container: a multi-container endpoint goes to SageMaker from an --endpoint-config file "
     "(docs/endpoint-config.md)\n"),
])
def test_local_serve_bad_input_is_one_line(args: list[str], expected: str) -> None:
    from smbyoc.cli.serve_cmd import local_serve

    command = with_request_options(local_serve, "endpoint", maybe_print_or_submit_endpoint)
    result = cli_runner().invoke(command, [*args, "--role-arn", ROLE, "--print-request"])
    assert (result.exit_code, result.stderr, result.stdout) == (1, expected, "")


def test_print_request_from_local_serve_options(tmp_path: Path) -> None:
    from smbyoc.cli.serve_cmd import local_serve

    command = with_request_options(local_serve, "endpoint", maybe_print_or_submit_endpoint)
    result = cli_runner().invoke(command, ["--endpoint-config", str(example(tmp_path)), "--image-uri", IMAGE,
                                          "--print-request"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    botocore_check_all(document)
    assert document == endpoint_config_requests(example(tmp_path), image_uris=[IMAGE]).to_document()
    single = cli_runner().invoke(command, ["--image", IMAGE, "--model-data", "s3://bucket/m.tar.gz", "--instance-type",
                                          "ml.g5.xlarge", "--startup-health-timeout", "600", "--endpoint-name", "rt",
                                          "--role-arn", ROLE, "--print-request"])
    assert single.exit_code == 0, single.output
    variant = json.loads(single.stdout)["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
