"""The bundled default example trained in the default train image and served by the default serve image,
as root and as an arbitrary non-root uid."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.runtime_client import invoke
from smbyoc.examples import default_example

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


@pytest.fixture(scope="module")
def trained_model(default_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-docker")
    proc = subprocess.run(
        [*SMBYOC, "local-train", "--image", default_images["train"], "-e", "train.py", "-s",
         str(default_example().source_dir), *[a for name, path in default_example().channels.items()
                                              for a in ("-c", f"{name}={path}")],
         "--job-name", "default-in-docker", "-o", str(out), "--instance-type", "ml.m5.large", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert result["TrainingJobStatus"] == "Completed"
    return out / "default-in-docker" / "output" / "model.tar.gz"


def validation_rows() -> tuple[list[str], list[str]]:
    path = next(default_example().channels["validation"].glob("*.csv"))
    with path.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    label = header.index("label")
    features = [",".join(v for i, v in enumerate(row) if i != label) for row in body[:200]]
    return features, [row[label] for row in body[:200]]


@pytest.mark.parametrize("user", [None, "4242:4242"], ids=["root", "uid-4242"])
def test_default_model_serves_accurate_predictions(
        trained_model: Path, default_images: dict[str, str], docker_client: Any, user: str | None) -> None:
    spec = EndpointSpec(model_data=trained_model, port=free_port(), startup_health_timeout=120)
    with DockerEndpoint(spec, docker_client, default_images["serve"], sink=None, user=user) as endpoint:
        container = docker_client.containers.get(endpoint.container.id)
        assert container.attrs["Config"]["User"] == (user or "")
        features, labels = validation_rows()
        response = invoke(endpoint.url, "\n".join(features).encode(), content_type="text/csv", accept="text/csv")
        predicted = [line.split(",")[0] for line in response.body.decode().strip().splitlines()]
        assert len(predicted) == len(labels)
        accuracy = sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
        assert accuracy >= 0.9, accuracy
        one = invoke(endpoint.url, json.dumps({"instances": [[float(x) for x in features[0].split(",")]]}).encode(),
                     content_type="application/json")
        assert json.loads(one.body)["predictions"][0]["label"] == predicted[0]
