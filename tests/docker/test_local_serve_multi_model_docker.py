"""A multi-model endpoint end to end in Docker: the emulator's front loads TargetModels written for
sagemaker-inference into smbyoc's serve image (labelled for MME) on first use, unloads the least recently used
one when the container answers 507, and answers unmodified boto3; an image without the label is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import expected, write_handler_model
from smbyoc.emulator.endpoint import EndpointSpec
from smbyoc.emulator.multi_model import MultiModelEndpoint, MultiModelSpec, default_multi_model_image
from smbyoc.errors import ConfigError

pytestmark = pytest.mark.docker

MODELS = {"a.tar.gz": ("a", 2.0, 0.0), "nested/b.tar.gz": ("b", 1.0, 10.0), "c.tar.gz": ("c", 0.5, -1.0)}


def test_multi_model_endpoint_in_docker(tmp_path: Path, docker_client: Any, default_images: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    prefix = tmp_path / "models"
    for target, (tag, scale, offset) in MODELS.items():
        write_handler_model(prefix / target, tag, scale, offset)
    write_handler_model(prefix / "broken.tar.gz", "broken", fail=True)
    image = default_multi_model_image(docker_client)
    lines: list[str] = []
    spec = MultiModelSpec(
        EndpointSpec(model_data=None, port=free_port(), name_prefix="smbyoc-test-mme",
                     environment={"SMBYOC_MME_MAX_MODELS": "2", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"}),
        prefix)
    endpoint = MultiModelEndpoint(spec, client=docker_client, image=image, sink=lines.append)
    with endpoint:
        runtime = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        for target in ["a.tar.gz", "nested/b.tar.gz", "a.tar.gz", "c.tar.gz", "nested/b.tar.gz", "a.tar.gz"]:
            answer = runtime.invoke_endpoint(EndpointName="local-endpoint", TargetModel=target, Body=b"[1, 4]",
                                             ContentType="application/json")
            tag, scale, offset = MODELS[target]
            assert json.loads(answer["Body"].read()) == expected(tag, scale, offset, [1, 4])
        # c found b least recently used; b then found a; a then found c
        assert endpoint.router.counters.evictions == 3
        assert endpoint.router.loaded_models() == ["nested/b.tar.gz", "a.tar.gz"]
        with pytest.raises(runtime.exceptions.ModelError) as failed:
            runtime.invoke_endpoint(EndpointName="local-endpoint", TargetModel="broken.tar.gz", Body=b"[1]",
                                    ContentType="application/json")
        assert failed.value.response["OriginalStatusCode"] == 500
        assert "this model is broken" in failed.value.response["OriginalMessage"]
        # the container was full: b (least recently used) made room for the load that then failed
        assert endpoint.router.loaded_models() == ["a.tar.gz"]
        assert endpoint.router.counters.evictions == 4 and endpoint.router.counters.load_failures == 1
    assert any("POST /models" in line for line in lines)


def test_an_image_without_the_label_is_refused(tmp_path: Path, docker_client: Any,
                                               default_images: dict[str, str]) -> None:
    (tmp_path / "models").mkdir()
    spec = MultiModelSpec(EndpointSpec(model_data=None, port=free_port()), tmp_path / "models")
    with pytest.raises(ConfigError, match="multi-models=true"):
        MultiModelEndpoint(spec, client=docker_client, image=default_images["serve"])
