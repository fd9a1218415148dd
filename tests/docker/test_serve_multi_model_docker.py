"""A multi-model endpoint in the default serve image: ``SAGEMAKER_MULTI_MODEL=true``, two extracted models in
a host directory mounted read-only at /opt/ml/models; load, invoke, list and unload through the published
port on 127.0.0.1 (contract.md §5)."""

from __future__ import annotations

import contextlib
import json
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port

pytestmark = pytest.mark.docker

MODEL = """
    import os

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "scale.txt")) as f:
            return float(f.read())

    def input_fn(input_data, content_type):
        import json
        return json.loads(input_data)

    def predict_fn(data, model):
        return {"y": [x * model for x in data], "pid": os.getpid()}
"""


def write_model(root: Path, name: str, scale: float) -> None:
    model = root / name / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(textwrap.dedent(MODEL))
    (model / "scale.txt").write_text(str(scale))
    for path in (root, *root.rglob("*")):  # the container reads as root; keep it readable for any uid
        path.chmod(0o755 if path.is_dir() else 0o644)


def call(url: str, method: str, path: str, data: Any = None) -> tuple[int, Any]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_ready(url: str, container: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if call(url, "GET", "/ping")[0] == 200:
                return
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.2)
    raise AssertionError(f"serve did not become ready:\n{container.logs().decode(errors='replace')[-4000:]}")


def test_multi_model_endpoint_in_the_default_serve_image(docker_client: Any, default_images: dict[str, str],
                                                          tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model(models, "m-one", 2.0)
    write_model(models, "m-two", 10.0)
    port = free_port()
    container = docker_client.containers.run(
        default_images["serve"], ["serve"], detach=True,
        environment={"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
        volumes={str(models): {"bind": "/opt/ml/models", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", port)}, labels={"com.smbyoc.test": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, container)
        for name in ("m-one", "m-two"):
            assert call(url, "POST", "/models", {"model_name": name, "url": f"/opt/ml/models/{name}/model"}) == (
                200, {"status": f'Model "{name}" registered'})
        for _ in range(4):  # whichever worker answers: loaded there already, or loaded now
            assert call(url, "POST", "/models/m-one/invoke", [1, 2])[1]["y"] == [2.0, 4.0]
            assert call(url, "POST", "/models/m-two/invoke", [1, 2])[1]["y"] == [10.0, 20.0]
        assert call(url, "GET", "/models") == (200, {"models": [
            {"modelName": "m-one", "modelUrl": "/opt/ml/models/m-one/model"},
            {"modelName": "m-two", "modelUrl": "/opt/ml/models/m-two/model"}]})
        status, body = call(url, "POST", "/models", {"model_name": "x", "url": "/etc"})
        assert status == 400 and "/opt/ml/models" in body["message"]
        assert call(url, "DELETE", "/models/m-one") == (200, {"status": 'Model "m-one" unregistered'})
        for _ in range(4):
            assert call(url, "POST", "/models/m-one/invoke", [1])[0] == 404
        assert call(url, "POST", "/models/m-two/invoke", [3])[1]["y"] == [30.0]
        assert call(url, "GET", "/models") == (200, {"models": [
            {"modelName": "m-two", "modelUrl": "/opt/ml/models/m-two/model"}]})
    finally:
        container.remove(force=True)
