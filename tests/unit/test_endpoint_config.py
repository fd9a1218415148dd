"""The endpoint configuration file (smbyoc.emulator.endpoint_config, api_validation, endpoint_definition;
docs/endpoint-config.md).

Every refusal is one ConfigError line ``<file>: <field path>: <why>``; the tests assert the exact path. The valid
requests, with S3 URIs in place of the local paths, must pass botocore's own validator unmodified: the same
request works against SageMaker.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smbyoc.emulator.api_validation import api_problems
from smbyoc.emulator.endpoint_config import load_endpoint_config
from smbyoc.emulator.endpoint_definition import Container, EndpointDefinition, Model, Variant
from smbyoc.errors import ConfigError

botocore_validate = pytest.importorskip("botocore.validate")
botocore_session = pytest.importorskip("botocore.session")

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "endpoints"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
IMAGE = "smbyoc/serve:cpu"
URI_MEMBERS = ("ModelDataUrl", "DestinationS3Uri", "S3OutputPath", "S3FailurePath")


# ------------------------------------------------------------------------------------------------- documents


def model(name: str, data: str | None = "model-a.tar.gz", **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": IMAGE, "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}
    if data is not None:
        container["ModelDataUrl"] = data
    return {"ModelName": name, "ExecutionRoleArn": ROLE, "PrimaryContainer": container, **extra}


def variant(name: str, model_name: str, weight: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"VariantName": name, "ModelName": model_name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
            "InitialVariantWeight": weight, **extra}


def capture() -> dict[str, Any]:
    return {"EnableCapture": True, "InitialSamplingPercentage": 50, "DestinationS3Uri": "capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}}


def shadow_doc() -> dict[str, Any]:
    """One production variant, one shadow variant, data capture: the shape SageMaker allows for shadows."""
    return {
        "Models": [model("model-a"), model("model-b", "model-b.tar.gz")],
        "EndpointConfig": {
            "EndpointConfigName": "shadow-config",
            "ProductionVariants": [variant("Production", "model-a", ContainerStartupHealthCheckTimeoutInSeconds=120,
                                           ModelDataDownloadTimeoutInSeconds=600)],
            "ShadowProductionVariants": [variant("Shadow", "model-b", 0.5, InstanceType="ml.c5.xlarge")],
            "DataCaptureConfig": capture(),
            "Tags": [{"Key": "team", "Value": "ml"}],
        },
    }


def ab_doc() -> dict[str, Any]:
    """Two production variants (weights 2 and 1) and data capture."""
    return {
        "EndpointName": "ab-endpoint",
        "Models": [model("model-a"), model("model-b", "model-b.tar.gz")],
        "EndpointConfig": {
            "EndpointConfigName": "ab-config",
            "ProductionVariants": [variant("A", "model-a", 2.0, InitialInstanceCount=2,
                                           RoutingConfig={"RoutingStrategy": "RANDOM"}),
                                   variant("B", "model-b", 1.0)],
            "DataCaptureConfig": capture(),
        },
    }


def serverless_doc() -> dict[str, Any]:
    return {
        "Models": [model("model-a")],
        "EndpointConfig": {
            "EndpointConfigName": "sls",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "model-a",
                                    "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}],
        },
    }


def async_doc() -> dict[str, Any]:
    return {
        "Models": [model("model-a")],
        "EndpointConfig": {
            "EndpointConfigName": "async-config",
            "ProductionVariants": [variant("AllTraffic", "model-a")],
            "AsyncInferenceConfig": {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
                                     "OutputConfig": {"S3OutputPath": "out", "S3FailurePath": "failed"}},
        },
    }


def pipeline_doc() -> dict[str, Any]:
    containers = [{"Image": "pre:1", "ContainerHostname": "pre", "Environment": {"A": "1"}},
                  {"Image": IMAGE, "ContainerHostname": "main", "ModelDataUrl": "model-a.tar.gz"}]
    return {
        "Models": [{"ModelName": "pipe", "Containers": containers, "InferenceExecutionConfig": {"Mode": "Serial"}}],
        "EndpointConfig": {"EndpointConfigName": "pipe", "ProductionVariants": [variant("AllTraffic", "pipe")]},
    }


def mme_doc() -> dict[str, Any]:
    doc = {
        "Models": [model("many", "mme")],
        "EndpointConfig": {"EndpointConfigName": "mme", "ProductionVariants": [variant("AllTraffic", "many")]},
    }
    doc["Models"][0]["PrimaryContainer"]["Mode"] = "MultiModel"
    return doc


VALID_DOCS = {"shadow": shadow_doc, "ab": ab_doc, "serverless": serverless_doc, "async": async_doc,
              "pipeline": pipeline_doc, "mme": mme_doc}


@pytest.fixture
def where(tmp_path: Path) -> Path:
    """A directory with the artifacts the documents name: two model archives and a multi-model prefix."""
    for name in ("model-a.tar.gz", "model-b.tar.gz"):
        (tmp_path / name).write_bytes(b"\x1f\x8b")
    (tmp_path / "mme").mkdir()
    return tmp_path


def write(where: Path, doc: Any, name: str = "endpoint.json") -> Path:
    path = where / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def refusal(where: Path, doc: Any, name: str = "endpoint.json") -> ConfigError:
    path = write(where, doc, name)
    with pytest.raises(ConfigError) as caught:
        load_endpoint_config(path)
    error = caught.value
    assert error.source == str(path)
    assert "\n" not in str(error)
    return error


def to_s3(value: Any) -> Any:
    """The same document with an S3 URI in every member that holds a local path."""
    if isinstance(value, dict):
        return {k: (f"s3://my-bucket/{Path(v).name or 'x'}" if k in URI_MEMBERS and isinstance(v, str) else to_s3(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [to_s3(v) for v in value]
    return value


def sagemaker_shape(name: str) -> Any:
    return botocore_session.get_session().get_service_model("sagemaker").shape_for(name)


# ---------------------------------------------------------------------------------------------- valid files


def test_full_valid_example_with_shadow_and_capture(where: Path) -> None:
    path = write(where, shadow_doc())
    definition = load_endpoint_config(path)
    assert isinstance(definition, EndpointDefinition)
    assert definition.endpoint_name == "shadow-config"  # EndpointName defaults to the EndpointConfigName
    assert definition.endpoint_config_name == "shadow-config"
    assert definition.source == path
    env = {"SAGEMAKER_PROGRAM": "inference.py"}
    assert definition.models == {
        "model-a": Model("model-a", (Container(IMAGE, where / "model-a.tar.gz", env, None, "SingleModel"),), "Serial"),
        "model-b": Model("model-b", (Container(IMAGE, where / "model-b.tar.gz", env, None, "SingleModel"),), "Serial"),
    }
    assert definition.production_variants == (
        Variant("Production", "model-a", 1, "ml.m5.large", 1.0, None, container_startup_health_check_timeout=120,
                model_data_download_timeout=600),)
    assert definition.shadow_variants == (Variant("Shadow", "model-b", 1, "ml.c5.xlarge", 0.5),)
    assert definition.model_of(definition.shadow_variants[0]).name == "model-b"
    assert definition.data_capture == {**capture(), "DestinationS3Uri": str(where / "capture")}
    assert definition.async_config is None
    assert not definition.is_serverless and not definition.is_async
    # the requests as given, local paths made absolute, nothing else changed
    assert definition.endpoint_config_request["Tags"] == [{"Key": "team", "Value": "ml"}]
    assert definition.model_requests[1]["PrimaryContainer"]["ModelDataUrl"] == str(where / "model-b.tar.gz")


def test_two_production_variants_with_capture(where: Path) -> None:
    definition = load_endpoint_config(write(where, ab_doc()))
    assert definition.endpoint_name == "ab-endpoint"
    assert [(v.name, v.model_name, v.initial_weight, v.initial_instance_count) for v in
            definition.production_variants] == [("A", "model-a", 2.0, 2), ("B", "model-b", 1.0, 1)]
    assert definition.production_variants[0].routing_strategy == "RANDOM"
    assert definition.shadow_variants == ()
    assert definition.data_capture is not None and definition.data_capture["InitialSamplingPercentage"] == 50


def test_serverless_async_pipeline_and_multi_model(where: Path) -> None:
    sls = load_endpoint_config(write(where, serverless_doc()))
    assert sls.is_serverless
    assert sls.production_variants == (
        Variant("AllTraffic", "model-a", None, None, 1.0, {"MemorySizeInMB": 2048, "MaxConcurrency": 5}),)
    asy = load_endpoint_config(write(where, async_doc()))
    assert asy.is_async
    assert asy.async_config == {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
                                "OutputConfig": {"S3OutputPath": str(where / "out"),
                                                 "S3FailurePath": str(where / "failed")}}
    pipe = load_endpoint_config(write(where, pipeline_doc())).models["pipe"]
    assert pipe.mode == "Serial"
    assert [(c.image, c.hostname, c.model_data, dict(c.environment)) for c in pipe.containers] == [
        ("pre:1", "pre", None, {"A": "1"}), (IMAGE, "main", where / "model-a.tar.gz", {})]
    many = load_endpoint_config(write(where, mme_doc())).models["many"]
    assert many.is_multi_model and many.containers[0].model_data == where / "mme"


@pytest.mark.parametrize("name", sorted(VALID_DOCS))
def test_valid_requests_with_s3_uris_pass_botocore_unmodified(name: str) -> None:
    """The promise: replace the local paths by S3 URIs and the same requests pass botocore's validator (and the
    checks it leaves out: max, enum, pattern)."""
    doc = to_s3(VALID_DOCS[name]())
    for request in doc["Models"]:
        botocore_validate.validate_parameters(request, sagemaker_shape("CreateModelInput"))
        assert api_problems("CreateModelInput", request) == []
    botocore_validate.validate_parameters(doc["EndpointConfig"], sagemaker_shape("CreateEndpointConfigInput"))
    assert api_problems("CreateEndpointConfigInput", doc["EndpointConfig"]) == []
    endpoint = {"EndpointName": doc.get("EndpointName", doc["EndpointConfig"]["EndpointConfigName"]),
                "EndpointConfigName": doc["EndpointConfig"]["EndpointConfigName"]}
    botocore_validate.validate_parameters(endpoint, sagemaker_shape("CreateEndpointInput"))


def test_api_problems_reports_what_botocore_leaves_out() -> None:
    """§9.2: ParamValidator passes InitialSamplingPercentage 150 and CaptureMode 'Both'; api_problems does not."""
    request = to_s3(shadow_doc())["EndpointConfig"]
    request["DataCaptureConfig"]["InitialSamplingPercentage"] = 150
    request["DataCaptureConfig"]["CaptureOptions"] = [{"CaptureMode": "Both"}]
    botocore_validate.validate_parameters(request, sagemaker_shape("CreateEndpointConfigInput"))  # passes
    assert api_problems("CreateEndpointConfigInput", request, "EndpointConfig") == [
        ("EndpointConfig.DataCaptureConfig.InitialSamplingPercentage", "150 is above the maximum 100"),
        ("EndpointConfig.DataCaptureConfig.CaptureOptions[0].CaptureMode",
         "'Both' is not one of: Input, Output, InputAndOutput"),
    ]


YAML_TEXT = """\
# the shadow example, as YAML
Models:
  - ModelName: model-a
    ExecutionRoleArn: arn:aws:iam::123456789012:role/SageMakerExecutionRole
    PrimaryContainer:
      Image: smbyoc/serve:cpu
      ModelDataUrl: model-a.tar.gz
      Environment: {SAGEMAKER_PROGRAM: inference.py}
  - ModelName: model-b
    ExecutionRoleArn: arn:aws:iam::123456789012:role/SageMakerExecutionRole
    PrimaryContainer:
      Image: smbyoc/serve:cpu
      ModelDataUrl: model-b.tar.gz
      Environment: {SAGEMAKER_PROGRAM: inference.py}
EndpointConfig:
  EndpointConfigName: shadow-config
  ProductionVariants:
    - {VariantName: Production, ModelName: model-a, InitialInstanceCount: 1, InstanceType: ml.m5.large,
       InitialVariantWeight: 1.0, ContainerStartupHealthCheckTimeoutInSeconds: 120,
       ModelDataDownloadTimeoutInSeconds: 600}
  ShadowProductionVariants:
    - {VariantName: Shadow, ModelName: model-b, InitialInstanceCount: 1, InstanceType: ml.c5.xlarge,
       InitialVariantWeight: 0.5}
  DataCaptureConfig:
    EnableCapture: true
    InitialSamplingPercentage: 50
    DestinationS3Uri: capture
    CaptureOptions: [{CaptureMode: Input}, {CaptureMode: Output}]
    CaptureContentTypeHeader: {CsvContentTypes: [text/csv], JsonContentTypes: [application/json]}
  Tags: [{Key: team, Value: ml}]
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_gives_the_same_definition_as_json(where: Path, suffix: str) -> None:
    pytest.importorskip("yaml")
    from_yaml = load_endpoint_config(write_text(where / f"endpoint{suffix}", YAML_TEXT))
    from_json = load_endpoint_config(write(where, shadow_doc()))
    assert from_yaml.source != from_json.source
    fields = ("endpoint_name", "models", "production_variants", "shadow_variants", "data_capture",
              "endpoint_config_request", "model_requests")
    assert {f: getattr(from_yaml, f) for f in fields} == {f: getattr(from_json, f) for f in fields}


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_errors_name_the_line(where: Path) -> None:
    pytest.importorskip("yaml")
    path = write_text(where / "bad.yaml", "Models:\n  - ModelName: a\n    ModelName: b\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: is not valid YAML: line 3 column 5: the key 'ModelName' "
                                          r"appears twice"):
        load_endpoint_config(path)
    path = write_text(where / "bad2.yaml", "Models: [\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml: is not valid YAML: line 2 column 1"):
        load_endpoint_config(path)


def test_yaml_without_pyyaml_says_to_install_it(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # what an environment without PyYAML looks like to import
    path = write_text(where / "endpoint.yaml", YAML_TEXT)
    with pytest.raises(ConfigError) as caught:
        load_endpoint_config(path)
    assert str(caught.value) == f"{path}: reading YAML needs PyYAML: pip install pyyaml (or write the file as JSON)"


def test_relative_paths_resolve_against_the_file_not_the_working_directory(
        where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = where / "conf" / "sub"
    conf.mkdir(parents=True)
    (conf / "local.tar.gz").write_bytes(b"x")
    doc = ab_doc()
    doc["Models"][0]["PrimaryContainer"]["ModelDataUrl"] = "../../model-a.tar.gz"
    doc["Models"][1]["PrimaryContainer"]["ModelDataUrl"] = f"file://{where / 'model-b.tar.gz'}"
    doc["Models"].append(model("model-c", "local.tar.gz"))
    doc["EndpointConfig"]["ProductionVariants"].append(variant("C", "model-c"))
    doc["EndpointConfig"]["DataCaptureConfig"]["DestinationS3Uri"] = "./captured/here"
    elsewhere = where / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(conf, doc)
    definition = load_endpoint_config(Path("..") / "conf" / "sub" / "endpoint.json")
    assert [m.containers[0].model_data for m in definition.models.values()] == [
        where / "model-a.tar.gz", where / "model-b.tar.gz", conf / "local.tar.gz"]
    assert definition.data_capture is not None
    assert definition.data_capture["DestinationS3Uri"] == str(conf / "captured" / "here")


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json")) + sorted(EXAMPLES.glob("*.y*ml"))


def test_there_are_three_examples() -> None:
    assert {p.name for p in EXAMPLE_FILES} >= {"two-variants-shadow-capture.json", "serverless.json", "async.json"}


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_loads(example: Path, tmp_path: Path) -> None:
    """Each example, beside the model archives it names (users bring their own), loads; with S3 URIs it passes
    botocore."""
    if example.suffix == ".json":
        doc = json.loads(example.read_text(encoding="utf-8"))
    else:
        doc = pytest.importorskip("yaml").safe_load(example.read_text(encoding="utf-8"))
    copied = Path(shutil.copy(example, tmp_path / example.name))
    for request in doc["Models"]:
        for container in request.get("Containers") or [request["PrimaryContainer"]]:
            if "ModelDataUrl" in container:
                target = tmp_path / container["ModelDataUrl"]
                if container.get("Mode") == "MultiModel":
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(b"x")
    definition = load_endpoint_config(copied)
    assert definition.production_variants and definition.models
    s3 = to_s3(doc)
    for request in s3["Models"]:
        assert api_problems("CreateModelInput", request) == []
    assert api_problems("CreateEndpointConfigInput", s3["EndpointConfig"]) == []


# ------------------------------------------------------------------------------------------------- refusals

Mutation = Callable[[dict[str, Any]], Any]


def pv(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = doc["EndpointConfig"]["ProductionVariants"][i]
    return result


def primary(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = doc["Models"][i]["PrimaryContainer"]
    return result


def containers(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"Image": f"img{j}:1", **extra} for j in range(n)]


PV0 = "EndpointConfig.ProductionVariants[0]"
SHADOW = "EndpointConfig.ShadowProductionVariants"
MDU = "Models[0].PrimaryContainer.ModelDataUrl"

# (document, mutation, field path, part of the message)
REFUSALS: list[tuple[str, Mutation, str, str]] = [
    # botocore's ParamValidator: unknown fields, types, required, min
    ("ab", lambda d: pv(d).update(InitialVariantWeigth=pv(d).pop("InitialVariantWeight")),
     f"{PV0}.InitialVariantWeigth", "unknown field (did you mean InitialVariantWeight?)"),
    ("ab", lambda d: d.update(Endpoint="x"), "Endpoint", "unknown field (did you mean EndpointName?)"),
    ("ab", lambda d: primary(d).update(Imagee=primary(d).pop("Image")), "Models[0].PrimaryContainer.Imagee",
     "unknown field (did you mean Image?)"),
    ("ab", lambda d: pv(d).update(InitialInstanceCount="2"), f"{PV0}.InitialInstanceCount",
     "expected integer, got string '2'"),
    ("ab", lambda d: pv(d).update(InitialInstanceCount=0), f"{PV0}.InitialInstanceCount", "0 is below the minimum 1"),
    ("ab", lambda d: pv(d).update(InitialVariantWeight=-1), f"{PV0}.InitialVariantWeight", "-1 is below the minimum 0"),
    ("ab", lambda d: d["EndpointConfig"].update(ProductionVariants=[]), "EndpointConfig.ProductionVariants",
     "length 0 is below the minimum 1"),
    ("ab", lambda d: d["EndpointConfig"]["DataCaptureConfig"].pop("DestinationS3Uri"),
     "EndpointConfig.DataCaptureConfig.DestinationS3Uri", "required field is missing"),
    ("ab", lambda d: d["Models"][0].pop("ModelName"), "Models[0].ModelName", "required field is missing"),
    ("ab", lambda d: d.pop("EndpointConfig"), "EndpointConfig", "required field is missing"),
    ("ab", lambda d: d.update(Models=[]), "Models", "expected a non-empty list"),
    # what ParamValidator leaves out: max, enum, pattern, booleans for numbers
    ("ab", lambda d: pv(d).update(InitialInstanceCount=True), f"{PV0}.InitialInstanceCount",
     "expected integer, got boolean True"),
    ("ab", lambda d: pv(d).update(InstanceType="ml.m5.largee"), f"{PV0}.InstanceType",
     "'ml.m5.largee' is not one of the"),
    ("ab", lambda d: d["EndpointConfig"]["DataCaptureConfig"].update(InitialSamplingPercentage=150),
     "EndpointConfig.DataCaptureConfig.InitialSamplingPercentage", "150 is above the maximum 100"),
    ("ab", lambda d: d["EndpointConfig"]["DataCaptureConfig"].update(CaptureOptions=[{"CaptureMode": "Both"}]),
     "EndpointConfig.DataCaptureConfig.CaptureOptions[0].CaptureMode", "'Both' is not one of: Input, Output"),
    ("ab", lambda d: pv(d).update(VariantName="variant_a"), f"{PV0}.VariantName",
     "'variant_a' does not match the pattern"),
    ("ab", lambda d: d.update(EndpointName="my_endpoint"), "EndpointName", "'my_endpoint' does not match the pattern"),
    ("ab", lambda d: d.update(EndpointName="e" * 64), "EndpointName", "64 characters; at most 63"),
    ("ab", lambda d: pv(d).update(ContainerStartupHealthCheckTimeoutInSeconds=4000),
     f"{PV0}.ContainerStartupHealthCheckTimeoutInSeconds", "4000 is above the maximum 3600"),
    ("ab", lambda d: d["EndpointConfig"].update(ProductionVariants=[variant(f"v{i}", "model-a") for i in range(11)]),
     "EndpointConfig.ProductionVariants", "11 entries; at most 10"),
    # local paths and S3 URIs
    ("ab", lambda d: primary(d).update(ModelDataUrl="s3://bucket/model.tar.gz"), MDU,
     "'s3://bucket/model.tar.gz': S3 URIs are not supported yet; give a local path or a file:// URI"),
    ("ab", lambda d: d["EndpointConfig"]["DataCaptureConfig"].update(DestinationS3Uri="s3://b/capture"),
     "EndpointConfig.DataCaptureConfig.DestinationS3Uri", "S3 URIs are not supported yet"),
    ("async", lambda d: d["EndpointConfig"]["AsyncInferenceConfig"]["OutputConfig"].update(
        S3FailurePath="https://b.s3.amazonaws.com/f"),
     "EndpointConfig.AsyncInferenceConfig.OutputConfig.S3FailurePath", "S3 URIs are not supported yet"),
    ("ab", lambda d: primary(d).update(ModelDataUrl="http://host/model.tar.gz"),
     "Models[0].PrimaryContainer.ModelDataUrl", "expected a local path or a file:// URI"),
    ("ab", lambda d: primary(d).update(ModelDataUrl="file://model-a.tar.gz"), MDU,
     "a file:// URI needs an absolute path"),
    ("ab", lambda d: primary(d).update(ModelDataUrl=""), MDU, "the path is empty"),
    ("ab", lambda d: primary(d).update(ModelDataUrl="missing.tar.gz"), "Models[0].PrimaryContainer.ModelDataUrl",
     "missing.tar.gz does not exist"),
    ("ab", lambda d: d["EndpointConfig"]["DataCaptureConfig"].update(DestinationS3Uri="model-a.tar.gz"),
     "EndpointConfig.DataCaptureConfig.DestinationS3Uri", "is a file; an output location is a directory"),
    # variants
    ("ab", lambda d: pv(d, 1).update(ModelName="model-z"), "EndpointConfig.ProductionVariants[1].ModelName",
     "'model-z' is not the ModelName of any of Models (model-a, model-b)"),
    ("ab", lambda d: pv(d).pop("ModelName"), f"{PV0}.ModelName", "required field is missing"),
    ("ab", lambda d: pv(d, 1).update(VariantName="A"), "EndpointConfig.ProductionVariants[1].VariantName",
     "'A' is also EndpointConfig.ProductionVariants[0]'s name"),
    ("shadow", lambda d: d["EndpointConfig"]["ShadowProductionVariants"][0].update(VariantName="Production"),
     f"{SHADOW}[0].VariantName", "unique across production and shadow variants"),
    ("shadow", lambda d: d["EndpointConfig"]["ShadowProductionVariants"].append(variant("Shadow2", "model-b")),
     SHADOW, "2 entries; an endpoint has at most 1 shadow variant"),
    ("shadow", lambda d: d["EndpointConfig"]["ProductionVariants"].append(variant("Second", "model-a")),
     "EndpointConfig.ProductionVariants", "2 entries; with a shadow variant an endpoint has exactly one production"),
    ("ab", lambda d: [pv(d, i).update(InitialVariantWeight=0) for i in (0, 1)], "EndpointConfig.ProductionVariants",
     "every InitialVariantWeight is 0"),
    ("ab", lambda d: pv(d).pop("InstanceType"), f"{PV0}.InstanceType", "required field is missing (or give "
                                                                      "ServerlessConfig)"),
    ("ab", lambda d: pv(d).update(AcceleratorType="ml.eia2.medium"), f"{PV0}.AcceleratorType", "Elastic Inference"),
    # serverless
    ("serverless", lambda d: pv(d).update(InstanceType="ml.m5.large"), f"{PV0}.InstanceType",
     "not allowed with ServerlessConfig"),
    ("serverless", lambda d: pv(d).update(InitialInstanceCount=1), f"{PV0}.InitialInstanceCount",
     "not allowed with ServerlessConfig"),
    ("serverless", lambda d: pv(d)["ServerlessConfig"].update(MemorySizeInMB=1500),
     f"{PV0}.ServerlessConfig.MemorySizeInMB", "1500 is not one of 1024, 2048"),
    ("serverless", lambda d: pv(d)["ServerlessConfig"].update(MemorySizeInMB=8192),
     f"{PV0}.ServerlessConfig.MemorySizeInMB", "8192 is above the maximum 6144"),
    ("serverless", lambda d: pv(d)["ServerlessConfig"].update(ProvisionedConcurrency=6),
     f"{PV0}.ServerlessConfig.ProvisionedConcurrency", "6 is above MaxConcurrency 5"),
    ("serverless", lambda d: d["EndpointConfig"].update(DataCaptureConfig=capture()),
     "EndpointConfig.DataCaptureConfig", "data capture is not available for a serverless endpoint"),
    ("serverless", lambda d: d["EndpointConfig"].update(AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "o"}}),
     "EndpointConfig.AsyncInferenceConfig", "asynchronous inference is not available for a serverless endpoint"),
    ("serverless", lambda d: d["EndpointConfig"]["ProductionVariants"].append(variant("B", "model-a")),
     "EndpointConfig.ProductionVariants", "2 entries; a serverless endpoint"),
    ("serverless", lambda d: d["EndpointConfig"].update(ShadowProductionVariants=[variant("S", "model-a")]),
     SHADOW, "shadow variants are not available for a serverless endpoint"),
    ("serverless", lambda d: primary(d).update(Mode="MultiModel", ModelDataUrl="mme"),
     "Models[0].PrimaryContainer.Mode", "multi-model containers are not available for a serverless endpoint"),
    ("serverless", lambda d: d["Models"][0].update(Containers=containers(2)) or d["Models"][0].pop("PrimaryContainer"),
     "Models[0].Containers", "2 containers; inference pipelines and multi-container models are not available"),
    ("serverless", lambda d: d["Models"][0].update(VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}),
     "Models[0].VpcConfig", "VPC configuration is not available for a serverless endpoint"),
    ("serverless", lambda d: d["Models"][0].update(EnableNetworkIsolation=True), "Models[0].EnableNetworkIsolation",
     "network isolation is not available for a serverless endpoint"),
    # async, multi-model
    ("async", lambda d: d["EndpointConfig"].update(DataCaptureConfig=capture()), "EndpointConfig.DataCaptureConfig",
     "data capture is not available for asynchronous endpoints"),
    ("async", lambda d: d["EndpointConfig"].update(ShadowProductionVariants=[variant("S", "model-a")]), SHADOW,
     "shadow variants are for real-time endpoints"),
    ("async", lambda d: d["EndpointConfig"]["AsyncInferenceConfig"].pop("OutputConfig"),
     "EndpointConfig.AsyncInferenceConfig.OutputConfig", "required field is missing"),
    ("mme", lambda d: d["EndpointConfig"].update(DataCaptureConfig=capture()), "EndpointConfig.DataCaptureConfig",
     "data capture is not available for multi-model endpoints"),
    ("mme", lambda d: d["EndpointConfig"].update(AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "o"}}),
     "EndpointConfig.AsyncInferenceConfig", "asynchronous inference is not available for multi-model endpoints"),
    ("mme", lambda d: primary(d).update(ModelDataUrl="model-a.tar.gz"), "Models[0].PrimaryContainer.ModelDataUrl",
     "is not a directory: with Mode MultiModel ModelDataUrl is the prefix"),
    ("mme", lambda d: primary(d).pop("ModelDataUrl"), "Models[0].PrimaryContainer.ModelDataUrl",
     "required for Mode MultiModel"),
    ("mme", lambda d: primary(d).update(Mode="Multi"), "Models[0].PrimaryContainer.Mode",
     "'Multi' is not one of: SingleModel, MultiModel"),
    # models and containers
    ("pipeline", lambda d: d["Models"][0].update(Containers=[]), "Models[0].Containers",
     "0 entries; a model has 1 to 15 containers"),
    ("pipeline", lambda d: d["Models"][0].update(Containers=containers(16)), "Models[0].Containers",
     "16 entries; at most 15"),
    ("pipeline", lambda d: d["Models"][0].update(PrimaryContainer={"Image": "x:1"}), "Models[0].Containers",
     "give PrimaryContainer or Containers, not both"),
    ("pipeline", lambda d: d["Models"][0].pop("Containers"), "Models[0]",
     "a model needs PrimaryContainer or Containers"),
    ("pipeline", lambda d: d["Models"][0]["Containers"][1].pop("ContainerHostname"),
     "Models[0].Containers[1].ContainerHostname", "give ContainerHostname for every container or for none"),
    ("pipeline", lambda d: d["Models"][0]["Containers"][1].update(ContainerHostname="pre"),
     "Models[0].Containers[1].ContainerHostname", "'pre' is also Containers[0]'s"),
    ("pipeline", lambda d: d["Models"][0].update(InferenceExecutionConfig={"Mode": "Parallel"}),
     "Models[0].InferenceExecutionConfig.Mode", "'Parallel' is not one of: Serial, Direct"),
    ("pipeline", lambda d: d["Models"][0].update(InferenceExecutionConfig={}),
     "Models[0].InferenceExecutionConfig.Mode", "required field is missing"),
    ("pipeline", lambda d: (d["Models"][0].update(InferenceExecutionConfig={"Mode": "Direct"}),
                            d["Models"][0]["Containers"][1].update(Mode="MultiModel", ModelDataUrl="mme")),
     "Models[0].Containers[1].Mode", "cannot be part of a Direct multi-container model"),
    ("pipeline", lambda d: d["Models"][0]["Containers"][1].update(Mode="MultiModel", ModelDataUrl="mme"),
     "Models[0].Containers[1].Mode", "a MultiModel container inside a serial pipeline is not emulated"),
    ("pipeline", lambda d: d["Models"][0]["Containers"][0].pop("Image"), "Models[0].Containers[0].Image",
     "required field is missing"),
    ("ab", lambda d: d["Models"][1].update(ModelName="model-a"), "Models[1].ModelName",
     "'model-a' is also the name of Models[0]"),
    ("ab", lambda d: primary(d).update(ModelDataSource={"S3DataSource": {
        "S3Uri": "s3://b/m/", "S3DataType": "S3Prefix", "CompressionType": "None"}}),
     "Models[0].PrimaryContainer.ModelDataSource", "is not emulated; give the model as ModelDataUrl"),
    # environment limits
    ("ab", lambda d: primary(d).update(Environment={f"K{i}": "v" for i in range(101)}),
     "Models[0].PrimaryContainer.Environment", "101 entries; at most 100"),
    ("ab", lambda d: primary(d).update(Environment={"K": "v" * 1025}), "Models[0].PrimaryContainer.Environment.K",
     "1025 characters; at most 1024"),
    ("ab", lambda d: primary(d).update(Environment={"K": "é" * 600}), "Models[0].PrimaryContainer.Environment.K",
     "at most 1024 bytes (UTF-8); this one has 1200"),
    ("ab", lambda d: primary(d).update(Environment={"1K": "v"}), "Models[0].PrimaryContainer.Environment.1K",
     "'1K' does not match the pattern [a-zA-Z_][a-zA-Z0-9_]*"),
    ("ab", lambda d: primary(d).update(Environment={"K": 1}), "Models[0].PrimaryContainer.Environment.K",
     "expected string, got integer 1"),
]


@pytest.mark.parametrize(("base", "mutate", "key", "fragment"), REFUSALS,
                         ids=[f"{r[0]}-{r[2]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusals_name_the_file_and_the_field(where: Path, base: str, mutate: Mutation, key: str,
                                              fragment: str) -> None:
    doc = VALID_DOCS[base]()
    mutate(doc)
    error = refusal(where, doc)
    assert error.key == key, str(error)
    assert str(error).startswith(f"{where / 'endpoint.json'}: {key}: "), str(error)
    assert fragment in str(error)


def test_environment_total_across_containers(where: Path) -> None:
    """32 KB for all the maps of one model together (contract.md §3.1): 3 × 12 × 1002 bytes is too much."""
    doc = pipeline_doc()
    doc["Models"][0]["Containers"].append({"Image": "post:1", "ContainerHostname": "post"})
    for c in doc["Models"][0]["Containers"]:
        c["Environment"] = {f"K{i}": "v" * 1000 for i in range(10, 22)}
    error = refusal(where, doc)
    assert error.key == "Models[0].Containers"
    assert f"hold {3 * 12 * 1003:,} bytes together; a model's limit is 32,768 (32 KB)" in str(error)
    for c in doc["Models"][0]["Containers"]:  # 2 × 12 × 1003 bytes is not
        c["Environment"] = {f"K{i}": "v" * 1000 for i in range(100, 112)}
    doc["Models"][0]["Containers"].pop()
    assert load_endpoint_config(write(where, doc)).models["pipe"].containers[1].environment["K100"] == "v" * 1000


def test_a_primary_container_hostname_is_ignored_as_sagemaker_does(where: Path) -> None:
    doc = ab_doc()
    primary(doc)["ContainerHostname"] = "named"
    assert load_endpoint_config(write(where, doc)).models["model-a"].containers[0].hostname is None


def test_an_infinite_weight_is_refused_naming_the_field(where: Path) -> None:
    doc = ab_doc()
    pv(doc, 1)["InitialVariantWeight"] = float("inf")  # YAML's .inf; JSON's 1e999 (-inf: below the minimum 0)
    path = where / "endpoint.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as caught:
        load_endpoint_config(path)
    assert str(caught.value) == f"{path}: EndpointConfig.ProductionVariants[1].InitialVariantWeight: inf is not a " \
                                "finite number"
    path = write_text(where / "endpoint.json", json.dumps(doc).replace("Infinity", "1e999"))
    with pytest.raises(ConfigError, match="InitialVariantWeight: .*inf is not a finite number"):
        load_endpoint_config(path)


def test_weight_zero_for_one_variant_is_allowed(where: Path) -> None:
    doc = ab_doc()
    pv(doc, 1)["InitialVariantWeight"] = 0
    assert [v.initial_weight for v in load_endpoint_config(write(where, doc)).production_variants] == [2.0, 0.0]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("endpoint.json", '{"Models": [}', "is not valid JSON: line 1 column 13: Expecting value"),
    ("endpoint.json", '{"Models": [], "Models": []}', "the key 'Models' appears twice in one object"),
    ("endpoint.json", '{"Models": NaN}', "is not valid JSON: NaN is not JSON"),
    ("endpoint.json", "[]", "expected an object with EndpointName, Models, EndpointConfig, got list"),
    ("endpoint.txt", "{}", "expected a .json, .yaml or .yml file"),
])
def test_file_errors(where: Path, name: str, text: str, message: str) -> None:
    path = write_text(where / name, text)
    with pytest.raises(ConfigError) as caught:
        load_endpoint_config(path)
    assert str(caught.value) == f"{path}: {message}"


def test_missing_and_unreadable_files(where: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: does not exist$"):
        load_endpoint_config(where / "nope.json")
    path = where / "latin1.json"
    path.write_bytes(b'{"EndpointName": "\xe9"}')
    with pytest.raises(ConfigError, match=r"latin1\.json: is not UTF-8 text"):
        load_endpoint_config(path)


def test_the_document_is_not_modified(where: Path) -> None:
    """The definition's requests are copies: the validated document the caller may keep is untouched."""
    from smbyoc.emulator.endpoint_config import parse_endpoint_config

    doc = shadow_doc()
    before = copy.deepcopy(doc)
    definition = parse_endpoint_config(doc, source="inline", base_dir=where)
    assert doc == before
    assert definition.data_capture is not None and definition.data_capture["DestinationS3Uri"] == str(where / "capture")


def test_botocore_report_text_is_the_fallback(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If botocore's findings ever change shape, its own report line is shown, under the request's path."""
    from smbyoc.emulator import api_validation

    monkeypatch.setattr(api_validation, "_botocore_problem", lambda error, root: None)
    doc = ab_doc()
    pv(doc)["Bogus"] = 1
    error = refusal(where, doc)
    assert error.key == "EndpointConfig"
    assert 'Unknown parameter in ProductionVariants[0]: "Bogus"' in str(error)


DOC_PAGE = Path(__file__).resolve().parents[2] / "docs" / "endpoint-config.md"


@pytest.mark.parametrize("language", ["json", "yaml"])
def test_the_documentation_examples_load(tmp_path: Path, language: str) -> None:
    """The first json and yaml blocks of docs/endpoint-config.md are valid files."""
    import re

    block = re.search(rf"```{language}\n(.*?)```", DOC_PAGE.read_text(encoding="utf-8"), re.S)
    assert block is not None
    if language == "yaml":
        pytest.importorskip("yaml")
    (tmp_path / "models").mkdir()
    for name in ("churn-v1.tar.gz", "churn-v2.tar.gz"):
        (tmp_path / "models" / name).write_bytes(b"x")
    definition = load_endpoint_config(write_text(tmp_path / f"endpoint.{language}", block.group(1)))
    assert definition.models["churn-v1"].containers[0].model_data == tmp_path / "models" / "churn-v1.tar.gz"
