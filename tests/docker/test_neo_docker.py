"""A serve image with the TVM runtime (``smbyoc build --kind serve --requirements``) serving a model compiled
locally for ``ml_c5`` by ``smbyoc neo-compile``, through the emulator's Docker endpoint (docs/neo.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import B, W, free_port, write_linear_onnx
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.runtime_client import invoke
from smbyoc.serving import neo

pytestmark = [pytest.mark.docker, pytest.mark.heavy]  # builds an image with the 100 MB TVM wheel: ~90 s
tvm = pytest.importorskip("tvm", reason="the neo extra (apache-tvm) is installed by scripts/bootstrap")



def test_serve_image_with_tvm_serves_a_neo_compiled_model(docker_client: Any, docker_test_prefix: str,
                                                           tmp_path: Path) -> None:
    from smbyoc.images.builder import build_image
    from smbyoc.neo_compile import compile_onnx

    if "avx512f" not in neo.cpu_flags():
        pytest.skip("the ml_c5 build uses AVX-512 and this CPU has none")
    model = compile_onnx(write_linear_onnx(tmp_path / "linear.onnx"), tmp_path / "model", "ml_c5")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"apache-tvm=={tvm.__version__}\n")
    base = "smbyoc/base:bookworm" if docker_client.images.list(name="smbyoc/base:bookworm") else None
    tag = f"{docker_test_prefix}-neo:serve"
    build_image("serve", "cpu", tag, base_image=base, requirements=requirements, client=docker_client)
    try:
        spec = EndpointSpec(model_data=model, port=free_port(), startup_health_timeout=180,
                            environment={"TVM_USE_RUNTIME_LIB": "1"})
        with DockerEndpoint(spec, docker_client, tag, sink=None) as endpoint:
            x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
            response = invoke(endpoint.url, json.dumps(x.tolist()).encode(), content_type="application/json",
                              accept="application/json")
            np.testing.assert_allclose(np.asarray(json.loads(response.body)), x @ W + B, rtol=1e-6)
    finally:
        docker_client.images.remove(tag, force=True)
