"""Multi-model endpoints on the real `serve`: nginx in front of gunicorn with two workers (see serve_support.py).

Each model's code/inference.py answers with its own scale and the pid of the worker that ran it, so the tests
see every model served by both workers, each loading its own copy (lazily, on its first invoke there).
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_support import Server, start_server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nginx_on_path")]

MODEL = """
    import os
    import time

    import numpy as np

    import weights  # the model's own code/weights.py: every model has one, each with its own SCALE

    def model_fn(model_dir, context):
        return {"scale": weights.SCALE, "dir": model_dir}

    def predict_fn(data, model, context):
        pause = context.custom_attributes
        if pause and pause.startswith("sleep="):
            time.sleep(float(pause[len("sleep="):]))
        return {
            "y": (np.asarray(data) * model["scale"]).tolist(),
            "pid": os.getpid(),
            "dir": model["dir"],
            "target": context.get_request_header(0, "X-Amzn-SageMaker-Target-Model"),
        }
"""

SCALES = {"alpha": 2, "beta": 3, "gamma": 5}


def write_model(base: Path, name: str, scale: int | None = None, source: str = MODEL) -> str:
    model = base / "models" / name / "model"
    (model / "code").mkdir(parents=True, exist_ok=True)
    (model / "code" / "inference.py").write_text(textwrap.dedent(source))
    if scale is not None:
        (model / "code" / "weights.py").write_text(f"SCALE = {scale}\n")
    return str(model)


def call(server: Server, method: str, path: str, data: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    body = data if isinstance(data, bytes) or data is None else json.dumps(data).encode()
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    return status, hdrs, json.loads(raw) if raw else None


def load(server: Server, name: str, url: str) -> tuple[int, Any]:
    status, _, body = call(server, "POST", "/models", {"model_name": name, "url": url})
    return status, body


def invoke(server: Server, name: str, x: list[float], **headers: str) -> tuple[int, Any]:
    status, _, body = call(server, "POST", f"/models/{urllib.parse.quote(name, safe='')}/invoke", x, headers)
    return status, body


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def worker_pids(server: Server, expected: int = 2, deadline: float = 30.0) -> set[int]:
    """The gunicorn workers of ``server`` (the children of the supervisor's gunicorn child), once there are
    ``expected`` of them: /ping answers as soon as one worker is up, and on a busy machine the other may still be
    forking."""
    masters = [p for p in children(server.proc.pid) if b"gunicorn" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(masters) == 1
    start = time.monotonic()
    while len(workers := set(children(masters[0]))) < expected and time.monotonic() - start < deadline:
        time.sleep(0.1)
    return workers


def _invoke_into(answers: list[tuple[int, Any]], server: Server, name: str) -> None:
    answers.append(invoke(server, name, [1.0, 2.0], **{
        "X-Amzn-SageMaker-Custom-Attributes": "sleep=0.3", "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"}))


def served_by_both(server: Server, name: str, scale: int, deadline: float = 30.0) -> set[int]:
    """Invoke ``name`` in pairs of concurrent requests (each holds its worker 0.3 s, so the other request must
    go to the other worker) until two different workers answered; every answer must be right."""
    seen: set[int] = set()
    start = time.monotonic()
    while len(seen) < 2:
        assert time.monotonic() - start < deadline, f"{name} was served only by {seen}\n{server.output()[-3000:]}"
        answers: list[tuple[int, Any]] = []
        threads = [threading.Thread(target=_invoke_into, args=(answers, server, name)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for status, body in answers:
            assert status == 200, body
            assert body["y"] == [1.0 * scale, 2.0 * scale] and body["target"] == f"{name}.tar.gz"
            seen.add(body["pid"])
    return seen


@pytest.fixture(scope="module")
def mme(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("ml")
    (base / "models").mkdir()
    server = start_server(base, tmp_path_factory.mktemp("logs"), {"SAGEMAKER_MULTI_MODEL": "true"})
    try:
        server.wait_ready()
        yield server, base
    finally:
        server.stop()


def test_three_models_each_served_by_both_workers(mme: tuple[Server, Path]) -> None:
    server, base = mme
    urls = {name: write_model(base, name, scale) for name, scale in SCALES.items()}
    for name, url in urls.items():
        assert load(server, name, url) == (200, {"status": f'Model "{name}" registered'})
    workers = worker_pids(server)
    assert len(workers) == 2
    for name, scale in SCALES.items():
        assert served_by_both(server, name, scale) == workers
    status, body = invoke(server, "beta", [4.0])
    assert status == 200 and body["dir"] == urls["beta"]
    log = server.output()
    for name in SCALES:  # loaded once per worker: by POST /models in one, lazily in the other
        assert log.count(f"model '{name}' ({urls[name]}) loaded in worker") == 2, log[-3000:]

    status, _, listing = call(server, "GET", "/models?limit=2")
    assert status == 200 and listing == {
        "models": [{"modelName": n, "modelUrl": urls[n]} for n in ("alpha", "beta")], "nextPageToken": "2"}
    status, _, rest = call(server, "GET", f"/models?limit=2&next_page_token={listing['nextPageToken']}")
    assert status == 200 and rest == {"models": [{"modelName": "gamma", "modelUrl": urls["gamma"]}]}
    assert call(server, "GET", "/models/gamma")[::2] == (200, {"modelName": "gamma", "modelUrl": urls["gamma"]})

    assert load(server, "alpha", urls["alpha"]) == (409, {
        "error": "Conflict", "message": "model 'alpha' is already loaded", "status": 409})

    # unloaded through one worker: gone for both, and the idle one frees its copy at once (woken by the
    # other; without that it would wait for its next request or half of --timeout, 30 s)
    assert call(server, "DELETE", "/models/beta")[::2] == (200, {"status": 'Model "beta" unregistered'})
    wait_for(lambda: server.output().count("model 'beta' unloaded in worker") == 2, 5.0, server)
    for _ in range(6):
        assert invoke(server, "beta", [1.0]) == (404, {
            "error": "Not Found", "message": "Model not found: beta", "status": 404})
    assert call(server, "GET", "/models/beta")[0] == 404
    assert call(server, "DELETE", "/models/beta")[0] == 404
    assert [m["modelName"] for m in call(server, "GET", "/models")[2]["models"]] == ["alpha", "gamma"]
    # registered again from another directory: every worker serves the new one
    url = write_model(base, "beta-v2", 7)
    assert load(server, "beta", url)[0] == 200
    assert served_by_both(server, "beta", 7) == workers


def test_errors(mme: tuple[Server, Path]) -> None:
    server, base = mme
    url = write_model(base, "failing", source="""
        def model_fn(model_dir):
            raise RuntimeError("cannot read the weights")
    """)
    assert load(server, "failing", url) == (500, {
        "error": "Internal Server Error", "status": 500,
        "message": "model 'failing' failed to load: RuntimeError: cannot read the weights"})
    assert call(server, "GET", "/models/failing")[0] == 404
    assert "failing" not in [m["modelName"] for m in call(server, "GET", "/models")[2]["models"]]
    assert invoke(server, "failing", [1.0])[0] == 404
    assert invoke(server, "never-loaded", [1.0]) == (404, {
        "error": "Not Found", "message": "Model not found: never-loaded", "status": 404})

    good = write_model(base, "good", 1)
    for name in ("../escape", "a..b", "x" * 1025, "tab\there"):
        status, body = load(server, name, good)
        assert status == 400 and body["message"].startswith("model_name"), body
    outside = base / "outside"
    (outside / "code").mkdir(parents=True)
    (base / "models" / "link").symlink_to(outside)
    for bad in (str(outside), str(base / "models" / "link"), str(base / "models" / "missing"), "/etc"):
        status, body = load(server, "good", bad)
        assert status == 400 and repr(bad) in body["message"], body
    status, _, body = call(server, "POST", "/invocations", [1.0])
    assert status == 400 and body["message"].startswith("model_name is required")
    status, _, body = call(server, "GET", "/nope")  # nginx's own 404 names the multi-model routes
    assert status == 404 and "/models/<name>/invoke" in body["message"]


def test_max_models_and_memory_budget_answer_507(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    urls = [write_model(base, name, scale) for name, scale in SCALES.items()]
    capped = start_server(base, tmp_path, {"SAGEMAKER_MULTI_MODEL": "true", "SMBYOC_MME_MAX_MODELS": "2"})
    tiny = start_server(base, tmp_path, {"SAGEMAKER_MULTI_MODEL": "true", "SMBYOC_MME_MEMORY_BUDGET_MB": "5",
                                         "SAGEMAKER_USE_NGINX": "false"})
    try:
        capped.wait_ready()
        tiny.wait_ready()
        assert load(capped, "alpha", urls[0])[0] == 200 and load(capped, "beta", urls[1])[0] == 200
        status, body = load(capped, "gamma", urls[2])
        assert status == 507 and body["error"] == "Insufficient Storage"
        assert "SMBYOC_MME_MAX_MODELS=2" in body["message"]
        assert call(capped, "DELETE", "/models/alpha")[0] == 200  # what SageMaker does next: unload, retry
        assert load(capped, "gamma", urls[2])[0] == 200
        assert invoke(capped, "gamma", [1.0])[1]["y"] == [5.0]

        status, body = load(tiny, "alpha", urls[0])  # the serve alone uses far more than 5 MiB
        assert status == 507 and "memory budget of 5.0 MiB (SMBYOC_MME_MEMORY_BUDGET_MB=5)" in body["message"]
        assert call(tiny, "GET", "/models")[2] == {"models": []}
        assert call(tiny, "GET", "/ping")[0] == 200
    finally:
        assert capped.stop() == 0 and tiny.stop() == 0


def test_registry_lives_in_the_private_runtime_dir(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    url = write_model(base, "alpha", 2)
    runtime = tmp_path / "runtime"
    server = start_server(base, tmp_path, {"SAGEMAKER_MULTI_MODEL": "true", "SMBYOC_SERVE_RUNTIME_DIR": str(runtime)},
                          args=["--no-nginx"])
    try:
        server.wait_ready()
        assert load(server, "alpha", url)[0] == 200
        registry = runtime / "mme-registry"
        assert oct(registry.stat().st_mode & 0o777) == "0o700"
        files = [p for p in registry.iterdir() if p.suffix == ".json"]
        assert len(files) == 1 and json.loads(files[0].read_text())["modelName"] == "alpha"
        assert not [p for p in registry.iterdir() if p.suffix == ".loading" or p.name.startswith(".tmp")]
        assert served_by_both(server, "alpha", 2) == worker_pids(server)  # gunicorn's own sync workers too
    finally:
        assert server.stop() == 0
    assert os.path.isdir(runtime)  # a given runtime directory is the user's: kept


def test_a_load_may_take_longer_than_the_request_timeout(tmp_path: Path) -> None:
    """SageMaker lets an MME load take 360 s; with a 2 s SAGEMAKER_MODEL_SERVER_TIMEOUT a 4 s model_fn still
    loads: nginx waits longer for POST /models and the loading worker keeps its gunicorn heartbeat going."""
    base = tmp_path / "ml"
    url = write_model(base, "slow", source="""
        import time

        def model_fn(model_dir):
            time.sleep(4)
            return 6

        def predict_fn(data, model):
            return [model]
    """)
    server = start_server(base, tmp_path, {"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "2",
                                           "SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        server.wait_ready()
        workers = worker_pids(server, expected=1)  # one worker: waiting for two would wait out the deadline
        started = time.monotonic()
        assert load(server, "slow", url) == (200, {"status": 'Model "slow" registered'})
        assert time.monotonic() - started >= 4
        assert invoke(server, "slow", [1.0]) == (200, [6])
        assert worker_pids(server, expected=1) == workers  # not killed and restarted by gunicorn's 2 s timeout
        assert "WORKER TIMEOUT" not in server.output()
    finally:
        assert server.stop() == 0

