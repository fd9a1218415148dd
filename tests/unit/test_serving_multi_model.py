"""Multi-model endpoints in the serving app (contract.md §5): shapes and error paths through Flask's test client
and through the WSGI fast path gunicorn serves; two in-process "workers" sharing one registry directory; the
memory accounting of :mod:`smbyoc.serving.memory` against fake ``/proc`` and ``/sys`` trees.

The real thing (nginx + gunicorn with several workers) is tests/integration/test_serve_multi_model.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from werkzeug.test import Client

from smbyoc.errors import EnvVarError
from smbyoc.serving import memory
from smbyoc.serving.app import create_app
from smbyoc.serving.context import Context
from smbyoc.serving.env import MME_REGISTRY_DIR, ServingEnv
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.memory import MemoryBudget
from smbyoc.serving.model_holder import ModelHolder
from smbyoc.serving.model_registry import Registration, Registry
from smbyoc.serving.multi_model import MAX_NAME_BYTES, MultiModelServer, page, register_params, split_model_path
from smbyoc.serving.nginx import nginx_error_bodies, render_nginx_conf
from smbyoc.serving.supervisor import prepare

UNLIMITED = MemoryBudget(1 << 50, "test", "test", lambda: 0)

SCALE = """
    import numpy as np
    import helper

    def model_fn(model_dir, context):
        return {"scale": helper.SCALE, "dir": model_dir, "ctx_dir": context.system_properties["model_dir"]}

    def predict_fn(data, model, context):
        context.set_custom_attributes("seen=" + (context.custom_attributes or ""))
        return {
            "model": "{name}",
            "y": (np.asarray(data) * model["scale"]).tolist(),
            "dir": model["dir"], "ctx_dir": model["ctx_dir"],
            "request_dir": context.system_properties["model_dir"],
            "target": context.get_request_header(0, "X-Amzn-SageMaker-Target-Model"),
            "accept": context.get_request_header(0, "Accept"),
            "content_type": context.get_request_header(0, "Content-Type"),
        }
"""


@pytest.fixture(autouse=True)
def _forget_user_modules():
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("_smbyoc_model_", "inference", "helper", "shared_handler")):
            del sys.modules[name]
    sys.path[:] = path


@pytest.fixture
def ml(tmp_path: Path) -> Path:
    base = tmp_path / "ml"
    (base / "models").mkdir(parents=True)
    return base


def make_env(base: Path, **kw: object) -> ServingEnv:
    environ = {"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    environ.update({k: str(v) for k, v in kw.items()})
    return ServingEnv.from_env(environ)


def write_model(base: Path, name: str, source: str | None = SCALE, files: dict[str, str] | None = None) -> str:
    """models/<name>/model with code/inference.py (``source`` with ``{name}`` replaced) and ``files``."""
    model = base / "models" / name / "model"
    (model / "code").mkdir(parents=True, exist_ok=True)
    if source is not None:
        (model / "code" / "inference.py").write_text(textwrap.dedent(source.replace("{name}", name)))
    for rel, text in (files or {}).items():
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_text(textwrap.dedent(text))
    return str(model)


class Worker:
    """One simulated gunicorn worker: its own holder and :class:`MultiModelServer`, a shared registry."""

    def __init__(self, env: ServingEnv, registry: Path, kind: str, budget: MemoryBudget = UNLIMITED) -> None:
        self.holder = ModelHolder()
        self.mme = MultiModelServer(env, self.holder, Registry(registry), budget)
        self.app = create_app(env, self.holder, self.mme)
        self.app_calls = 0

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            self.app_calls += 1
            return self.app(environ, start_response)

        self.client = Client(fast_path(env, self.holder, counting, self.mme)) if kind == "fast-path" else \
            Client(self.app)

    def load(self, name: str, url: str) -> Any:
        return self.client.post("/models", json={"model_name": name, "url": url})

    def invoke(self, name: str, data: Any = (1, 2), **headers: str) -> Any:
        return self.client.post(f"/models/{name}/invoke", data=json.dumps(list(data)),
                                headers={"Content-Type": "application/json", **headers})


@pytest.fixture(params=["flask", "fast-path"])
def kind(request: pytest.FixtureRequest) -> str:
    """Every test runs against the Flask app and against the fast path in front of it: same answers."""
    return str(request.param)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "runtime" / MME_REGISTRY_DIR
    directory.mkdir(parents=True)
    return directory


def error(response: Any) -> tuple[int, str]:
    body = json.loads(response.data)
    assert set(body) == {"error", "message", "status"} and body["status"] == response.status_code
    return response.status_code, body["message"]


# ------------------------------------------------------------------------------------------ the routes


def test_load_list_describe_invoke_unload(ml: Path, registry: Path, kind: str) -> None:
    env = make_env(ml)
    w = Worker(env, registry, kind)
    urls = {n: write_model(ml, n, files={"code/helper.py": f"SCALE = {s}\n"}) for n, s in (("a", 2), ("b", 10))}
    for name, url in urls.items():
        r = w.load(name, url)
        assert r.status_code == 200 and r.json == {"status": f'Model "{name}" registered'}
    assert w.client.get("/models").json == {"models": [{"modelName": n, "modelUrl": u} for n, u in urls.items()]}
    assert w.client.get("/models/b").json == {"modelName": "b", "modelUrl": urls["b"]}
    r = w.invoke("a", (1, 2), **{"X-Amzn-SageMaker-Target-Model": "a/model.tar.gz", "Accept": "application/json",
                                 "X-Amzn-SageMaker-Custom-Attributes": "trace=1"})
    assert r.status_code == 200, r.data
    assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "seen=trace=1"
    assert r.json == {"model": "a", "y": [2, 4], "dir": urls["a"], "ctx_dir": urls["a"], "request_dir": urls["a"],
                      "target": "a/model.tar.gz", "accept": "application/json", "content_type": "application/json"}
    assert w.invoke("b", (1, 2)).json["y"] == [10, 20]  # b's own helper.py, not a's
    calls = w.app_calls
    assert w.client.post("/invocations?model_name=b", data="[3]", content_type="application/json").json["y"] == [30]
    if kind == "fast-path":
        assert w.app_calls == calls + 1  # /invocations?model_name= goes through Flask...
        w.invoke("a")
        assert w.app_calls == calls + 1  # ...a loaded model's /invoke does not
    r = w.client.delete("/models/a")
    assert r.status_code == 200 and r.json == {"status": 'Model "a" unregistered'}
    assert w.holder.names() == ["b"]
    assert error(w.invoke("a")) == (404, "Model not found: a")
    assert error(w.client.get("/models/a")) == (404, "Model not found: a")
    assert error(w.client.delete("/models/a")) == (404, "Model not found: a")
    assert w.client.get("/models").json == {"models": [{"modelName": "b", "modelUrl": urls["b"]}]}
    owners = [getattr(m, "__file__", "") for n, m in sys.modules.items() if n.startswith("_smbyoc_model_")]
    assert owners == [f"{urls['b']}/code/inference.py"]  # a's module left sys.modules with the model


def test_register_accepts_query_parameters_and_refuses_bad_bodies(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "q", files={"code/helper.py": "SCALE = 3\n"})
    assert w.client.post(f"/models?model_name=q&url={url}").status_code == 200
    assert w.invoke("q", (1,)).json["y"] == [3]
    assert error(w.client.post("/models", data="{", content_type="application/json"))[0] == 400
    assert error(w.client.post("/models", data="[1]", content_type="application/json"))[1].startswith(
        "the body must be a JSON object")
    assert error(w.client.post("/models", json={"url": url})) == (400, "model_name is required (a non-empty string)")
    assert error(w.client.post("/models", json={"model_name": "z"}))[1].startswith("url is required")
    assert error(w.client.post("/models", json={"model_name": 7, "url": url}))[0] == 400


def test_pagination(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "m", files={"code/helper.py": "SCALE = 1\n"})
    names = [f"m{i:03d}" for i in range(5)]
    for name in names:
        assert w.load(name, url).status_code == 200
    first = w.client.get("/models?limit=2").json
    assert [m["modelName"] for m in first["models"]] == names[:2] and first["nextPageToken"] == "2"
    second = w.client.get(f"/models?limit=2&next_page_token={first['nextPageToken']}").json
    assert [m["modelName"] for m in second["models"]] == names[2:4] and second["nextPageToken"] == "4"
    last = w.client.get("/models?limit=2&next_page_token=4").json
    assert [m["modelName"] for m in last["models"]] == names[4:] and "nextPageToken" not in last
    assert "nextPageToken" not in w.client.get("/models?limit=5").json  # exactly the rest: last page
    assert len(w.client.get("/models?limit=1000").json["models"]) == 5  # > 100 means 100
    assert error(w.client.get("/models?limit=x")) == (400, "query parameter limit must be an integer, not 'x'")
    assert error(w.client.get("/models?next_page_token=abc"))[0] == 400


def test_page_limits() -> None:
    regs = {f"n{i:03d}": Registration(f"n{i:03d}", "u", "p", "t") for i in range(250)}
    assert len(page(regs, None, None)["models"]) == 100 and page(regs, None, None)["nextPageToken"] == "100"
    assert len(page(regs, "0", None)["models"]) == 100  # 0 and negatives mean the default, never an empty page
    assert page(regs, None, "200") == {"models": [{"modelName": f"n{i:03d}", "modelUrl": "u"} for i in range(200, 250)]}
    assert page(regs, None, "-5")["models"][0]["modelName"] == "n000"
    assert page({}, None, None) == {"models": []}


@pytest.mark.parametrize(("name", "needle"), [
    ("a/b", "contains '/' or '..'"),
    ("..", "contains '/' or '..'"),
    ("x..y", "contains '/' or '..'"),
    ("a\x01b", "contains a control character"),
    ("a\nb", "contains a control character"),
    ("é" * (MAX_NAME_BYTES // 2 + 1), f"longer than {MAX_NAME_BYTES} bytes"),
    ("", "model_name is required"),
])
def test_unsafe_names_are_refused(ml: Path, registry: Path, kind: str, name: str, needle: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "ok", files={"code/helper.py": "SCALE = 1\n"})
    status, message = error(w.load(name, url))
    assert status == 400 and needle in message
    assert w.client.get("/models").json == {"models": []} and not os.listdir(registry)


def test_names_with_slashes_in_paths(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    assert error(w.client.get("/models/a/b"))[0] == 400
    assert error(w.client.post("/models/a/b/invoke", data="[1]", content_type="application/json"))[0] == 400
    assert error(w.client.delete("/models/a%2Fb"))[0] == 400
    assert error(w.client.get("/models/a/invoke"))[0] == 405
    assert error(w.client.put("/models/a"))[0] == 405
    assert split_model_path("invoke") == ("invoke", None) and split_model_path("x/invoke") == ("x", "invoke")


def test_a_name_of_1024_bytes_and_any_other_characters_is_fine(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "ok", files={"code/helper.py": "SCALE = 1\n"})
    for name in ("x" * MAX_NAME_BYTES, "d41d8cd98f00b204e9800998ecf8427e", "a b:c?d=é.tar.gz"):
        assert w.load(name, url).status_code == 200, name
    assert w.invoke("a%20b:c%3Fd=%C3%A9.tar.gz", (2,)).json["y"] == [2]
    assert len(w.client.get("/models").json["models"]) == 3


def test_unsafe_urls_are_refused(ml: Path, registry: Path, tmp_path: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    outside = tmp_path / "outside"
    (outside / "code").mkdir(parents=True)
    (ml / "models" / "escape").symlink_to(outside)
    (ml / "models" / "file").write_text("x")
    cases = {
        str(outside): "is not under the multi-model directory",
        str(ml / "models" / "escape"): f"(it resolves to {outside})",
        str(ml / "models" / ".." / "models" / ".." / "x"): "does not exist",
        str(ml / "models"): "is not under the multi-model directory",
        str(ml / "models" / "file"): "is not a directory",
        "models/x": "is not an absolute path",
        str(ml / "models") + "/a\x00": "contains a control character",
    }
    for url, needle in cases.items():
        status, message = error(w.load("m", url))
        assert status == 400 and needle in message, (url, message)
        assert url[:50].replace("\x00", "\\x00") in message  # the culprit is named
    assert w.client.get("/models").json == {"models": []}


def test_invocations_without_model_name_is_a_clear_400(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    status, message = error(w.client.post("/invocations", data="[1]", content_type="application/json"))
    assert status == 400 and message.startswith("model_name is required") and "/models/<model_name>/invoke" in message
    assert error(w.client.post("/invocations?model_name=nope", data="[1]", content_type="application/json")) == (
        404, "Model not found: nope")
    assert w.client.get("/ping").status_code == 200  # up with no model at all
    assert w.client.get("/execution-parameters").status_code == 404


def test_409_when_loaded_or_being_loaded(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 1\n"})
    assert w.load("a", url).status_code == 200
    assert error(w.load("a", url)) == (409, "model 'a' is already loaded")
    with w.mme.registry.loading("b"):  # another worker (here: this live process) is loading b
        assert error(w.load("b", url)) == (409, "model 'b' is being loaded")
    assert w.load("b", url).status_code == 200
    # a marker left by a loader that died (a worker killed mid-load) does not block the name forever
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    marker = [p for p in registry.iterdir() if p.suffix == ".loading"]
    assert marker == []
    from smbyoc.serving.model_registry import _key

    (registry / f"{_key('c')}.loading").write_text(dead)
    assert w.load("c", url).status_code == 200
    assert not [p for p in registry.iterdir() if p.suffix == ".loading"]
    # a loader whose marker was taken over meanwhile (judged stale by another worker) leaves the new one alone
    taken = registry / f"{_key('d')}.loading"
    with w.mme.registry.loading("d"):
        assert taken.read_text().split()[0] == str(os.getpid())  # written whole when it appears
        taken.unlink()
        taken.write_text(f"{os.getpid()} another-loader")
    assert taken.read_text() == f"{os.getpid()} another-loader"
    taken.unlink()


def test_model_fn_raising_is_500_naming_it_and_nothing_is_registered(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "bad", "def model_fn(model_dir):\n    raise ValueError('weights are corrupt')\n")
    status, message = error(w.load("bad", url))
    assert (status, message) == (500, "model 'bad' failed to load: ValueError: weights are corrupt")
    assert w.client.get("/models").json == {"models": []} and w.holder.names() == []
    assert error(w.invoke("bad"))[0] == 404
    broken = write_model(ml, "broken", "import nothing_like_this\n")
    status, message = error(w.load("broken", broken))
    assert status == 500 and "ModuleNotFoundError: No module named 'nothing_like_this'" in message
    assert "Traceback" not in message  # tracebacks go to the log only
    oom = write_model(ml, "oom", "def model_fn(model_dir):\n    raise MemoryError('no room')\n")
    assert error(w.load("oom", oom)) == (507, "out of memory: model 'oom' failed to load: MemoryError: no room")
    assert not [m for m in sys.modules if m.startswith("_smbyoc_model_")]
    # fixed, the same name loads
    (Path(url) / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return 1\n"
                                                     "def predict_fn(data, model):\n    return [model]\n")
    assert w.load("bad", url).status_code == 200 and w.invoke("bad").json == [1]


def test_a_registry_that_cannot_be_written_leaves_no_model_held(ml: Path, registry: Path, kind: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    w = Worker(make_env(ml), registry, kind)
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 1\n"})

    def full_disk(registration: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w.mme.registry, "add", full_disk)
    assert error(w.load("a", url))[0] == 500
    assert w.holder.names() == []  # not held unregistered, where no later load could take its place
    monkeypatch.undo()
    assert w.load("a", url).status_code == 200 and w.holder.names() == ["a"]


def test_max_models_answers_507(ml: Path, registry: Path, kind: str) -> None:
    w = Worker(make_env(ml, SMBYOC_MME_MAX_MODELS=2), registry, kind)
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 1\n"})
    assert w.load("a", url).status_code == 200 and w.load("b", url).status_code == 200
    status, message = error(w.load("c", url))
    assert status == 507 and "SMBYOC_MME_MAX_MODELS=2" in message
    assert w.client.delete("/models/a").status_code == 200
    assert w.load("c", url).status_code == 200


def test_memory_budget_answers_507_before_and_after_a_load(ml: Path, registry: Path, kind: str) -> None:
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 1\n", "weights.bin": "x" * 4096})
    used = [0]
    budget = MemoryBudget(10_000, "SMBYOC_MME_MEMORY_BUDGET_MB=test", "fake", lambda: used[0])
    w = Worker(make_env(ml), registry, kind, budget)
    used[0] = 10_000 - 4096  # + the model's files on disk (about 4.1 KB) goes over
    status, message = error(w.load("a", url))
    assert status == 507 and "would pass its memory budget" in message and "SMBYOC_MME_MEMORY_BUDGET_MB" in message
    assert w.holder.names() == []

    loads = []
    budget2 = MemoryBudget(10_000, "test", "fake", lambda: 20_000 if loads else 0)
    w2 = Worker(make_env(ml), registry, kind, budget2)
    original = w2.holder.load

    def load(name: str, loader: Any = None) -> Any:
        loads.append(name)  # from now on the (fake) serve uses more than its budget
        return original(name, loader)

    w2.holder.load = load  # type: ignore[method-assign]
    status, message = error(w2.load("a", url))
    assert status == 507 and "the model was unloaded" in message
    assert w2.holder.names() == [] and w2.client.get("/models").json == {"models": []}


# ------------------------------------------------------------------------------- several workers


def test_workers_share_the_registry(ml: Path, registry: Path, kind: str) -> None:
    env = make_env(ml)
    one, two = Worker(env, registry, kind), Worker(env, registry, kind)
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 2\n"})
    assert one.load("a", url).status_code == 200
    assert error(two.load("a", url)) == (409, "model 'a' is already loaded")
    assert two.holder.names() == []
    assert two.invoke("a", (1,)).json["y"] == [2]  # loaded lazily in the second worker
    assert two.holder.names() == ["a"]
    assert two.client.get("/models/a").json["modelName"] == "a"
    # unloaded by one worker: the other drops its copy at its next request
    assert two.client.delete("/models/a").status_code == 200
    assert error(one.invoke("a")) == (404, "Model not found: a")
    assert one.holder.names() == []
    # registered anew with other code: a worker still holding the old copy reloads it
    assert one.load("a", url).status_code == 200
    assert two.invoke("a", (1,)).json["y"] == [2]
    other = write_model(ml, "a2", files={"code/helper.py": "SCALE = 5\n"})
    assert one.client.delete("/models/a").status_code == 200 and one.load("a", other).status_code == 200
    assert two.invoke("a", (1,)).json["y"] == [5]
    assert one.invoke("a", (1,)).json["y"] == [5]


def test_a_lazy_load_over_the_limit_is_507_for_that_invoke(ml: Path, registry: Path, kind: str) -> None:
    env = make_env(ml, SMBYOC_MME_MAX_MODELS=1)
    one, two = Worker(env, registry, kind), Worker(env, registry, kind)
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 2\n"})
    assert one.load("a", url).status_code == 200
    assert error(one.load("b", url))[0] == 507
    assert two.invoke("a").status_code == 200
    two.mme.registry.add(Registration("b", url, url, "forced"))  # a race past the cap: b registered anyway
    status, message = error(two.invoke("b"))
    assert status == 507 and "SMBYOC_MME_MAX_MODELS=1" in message
    assert two.invoke("a").status_code == 200


def test_the_registry_generation_counts_changes(registry: Path) -> None:
    reg = Registry(registry)
    assert reg.generation() == 0 and reg.read() == {}
    first = Registration("a", "/u", "/p", "t1")
    assert reg.add(first) and reg.generation() == 1
    assert not reg.add(Registration("a", "/u", "/p", "t2")) and reg.generation() == 1
    assert reg.read() == {"a": first}
    assert [p.name for p in registry.iterdir() if p.name.startswith(".tmp")] == []
    (registry / "junk.json").write_text("{")
    assert reg.read() == {"a": first}  # an unreadable file is skipped (and logged)
    assert reg.remove("a") and not reg.remove("a") and reg.generation() == 2


def test_register_params() -> None:
    assert register_params({"model_name": "q", "url": "/u"}, b"") == ("q", "/u")
    assert register_params({"model_name": "q"}, b'{"url": "/b"}') == ("q", "/b")
    assert register_params({"model_name": "q", "url": "/u"}, b'{"model_name": "b"}') == ("b", "/u")


# --------------------------------------------------------------------------- handler modules


def test_a_model_without_code_uses_the_image_module_then_the_default_loader(ml: Path, registry: Path,
                                                                             tmp_path: Path, kind: str) -> None:
    image_code = tmp_path / "image-code"
    image_code.mkdir()
    (image_code / "shared_handler.py").write_text(textwrap.dedent("""
        import os
        def model_fn(model_dir):
            return os.path.basename(os.path.dirname(model_dir))
        def predict_fn(data, model):
            return {"shared": model}
    """))
    env = make_env(ml, SAGEMAKER_PROGRAM="shared_handler.py", SAGEMAKER_SUBMIT_DIRECTORY=str(image_code))
    w = Worker(env, registry, kind)
    plain = write_model(ml, "plain", source=None)
    own = write_model(ml, "own", "def model_fn(d):\n    return 0\ndef predict_fn(x, m):\n    return {'own': m}\n")
    (Path(own) / "code" / "shared_handler.py").write_text((Path(own) / "code" / "inference.py").read_text())
    assert w.load("plain", plain).status_code == 200 and w.load("own", own).status_code == 200
    assert w.invoke("plain").json == {"shared": "plain"}
    assert w.invoke("own").json == {"own": 0}  # the model's own code/<SAGEMAKER_PROGRAM> comes first

    default_env = make_env(ml)  # no module anywhere: the default loader (here: no model file, one clear line)
    registry2 = registry.parent / "r2"
    registry2.mkdir()
    w2 = Worker(default_env, registry2, kind)
    status, message = error(w2.load("plain", plain))
    assert status == 500 and message.startswith("model 'plain' failed to load:") and "UserCodeError" in message


def test_default_onnx_model_per_directory(ml: Path, registry: Path, kind: str) -> None:
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
    from serve_support import expected, write_linear_onnx

    url = write_model(ml, "onnx", source=None)
    write_linear_onnx(Path(url) / "model.onnx")
    w = Worker(make_env(ml), registry, kind)
    assert w.load("onnx", url).status_code == 200
    x = [[1.0, 2.0, 3.0]]
    np.testing.assert_allclose(w.client.post("/models/onnx/invoke", data=json.dumps(x),
                                             content_type="application/json").json, expected(x))


SAGEMAKER_INFERENCE_MODEL = """
    import json
    import os

    import numpy as np

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "weights.json")) as f:
            return np.array(json.load(f))

    def input_fn(input_data, content_type):
        assert content_type == "application/json"
        return np.array(json.loads(input_data))

    def predict_fn(data, model):
        return data @ model

    def output_fn(prediction, accept):
        return json.dumps({"predictions": prediction.tolist()}), "application/json"
"""


def test_a_sagemaker_inference_model_directory_loads_unchanged(ml: Path, registry: Path, kind: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The same directory through sagemaker-inference's own Transformer (the oracle) and through /invoke."""
    from sagemaker_inference.transformer import Transformer

    url = write_model(ml, "si", SAGEMAKER_INFERENCE_MODEL, files={"weights.json": "[[1, 2], [3, 4]]"})
    w = Worker(make_env(ml), registry, kind)
    assert w.load("si", url).status_code == 200
    x = [[1, 1], [2, 0.5]]
    body = json.dumps(x).encode()
    ours = w.client.post("/models/si/invoke", data=body, content_type="application/json")
    assert ours.status_code == 200

    monkeypatch.syspath_prepend(str(Path(url) / "code"))
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    context = Context("si", url, {"Content-Type": "application/json", "Accept": "application/json"})
    theirs = Transformer().transform([{"body": body}], context)
    assert context.get_response_content_type(0) == ours.headers["Content-Type"] == "application/json"
    assert json.loads(theirs[0]) == ours.json == {"predictions": (np.array(x) @ [[1, 2], [3, 4]]).tolist()}


# ---------------------------------------------------------------------------------- serve pieces


def test_supervisor_creates_an_empty_private_registry(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    (runtime / MME_REGISTRY_DIR).mkdir()
    (runtime / MME_REGISTRY_DIR / "stale.json").write_text("{}")
    for nginx in ("true", "false"):
        env = make_env(tmp_path / "ml", SMBYOC_SERVE_RUNTIME_DIR=runtime, SAGEMAKER_USE_NGINX=nginx)
        plan = prepare(env, nginx_bin=sys.executable)
        registry = plan.runtime_dir / MME_REGISTRY_DIR
        assert stat.S_IMODE(registry.stat().st_mode) == 0o700 and list(registry.iterdir()) == []
        (registry / "stale.json").write_text("{}")
    single = make_env(tmp_path / "ml", SAGEMAKER_MULTI_MODEL="false", SMBYOC_SERVE_RUNTIME_DIR=tmp_path / "rt2")
    plan = prepare(single, nginx_bin=sys.executable)
    assert not (plan.runtime_dir / MME_REGISTRY_DIR).exists()


def test_nginx_404_names_the_multi_model_routes(tmp_path: Path) -> None:
    body = nginx_error_bodies(make_env(tmp_path))["body_404"]
    assert "POST /models/<name>/invoke" in body and "/invocations" not in body
    assert "/models" not in nginx_error_bodies(make_env(tmp_path, SAGEMAKER_MULTI_MODEL="false"))["body_404"]
    conf = render_nginx_conf(make_env(tmp_path), tmp_path, tmp_path / "g.sock")
    block = conf[conf.index("location = /models {"):]
    assert block.index("proxy_read_timeout 360s;") < block.index("proxy_pass") < block.index("}")
    single = render_nginx_conf(make_env(tmp_path, SAGEMAKER_MULTI_MODEL="false"), tmp_path, tmp_path / "g.sock")
    assert "location = /models" not in single and "proxy_read_timeout 360s" not in single


def test_mme_variables() -> None:
    env = ServingEnv.from_env({"SMBYOC_MME_MEMORY_BUDGET_MB": "512", "SMBYOC_MME_MAX_MODELS": "3"})
    assert (env.mme_memory_budget_mb, env.mme_max_models) == (512, 3)
    assert (ServingEnv.from_env({}).mme_memory_budget_mb, ServingEnv.from_env({}).mme_max_models) == (None, 0)
    with pytest.raises(EnvVarError, match="SMBYOC_MME_MAX_MODELS"):
        ServingEnv.from_env({"SMBYOC_MME_MAX_MODELS": "-1"})
    with pytest.raises(EnvVarError, match="SMBYOC_MME_MEMORY_BUDGET_MB"):
        ServingEnv.from_env({"SMBYOC_MME_MEMORY_BUDGET_MB": "lots"})


# ---------------------------------------------------------------------------------------- memory


def fake_root(tmp_path: Path, cgroup: str = "0::/\n") -> Path:
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    (root / "proc" / "meminfo").write_text("MemTotal:       2048000 kB\nMemFree:  1 kB\n")
    return root


def test_cgroup_v2_limit_is_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/outer/inner\n")
    mount = root / "sys/fs/cgroup"
    inner = mount / "outer" / "inner"
    inner.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("memory\n")
    (mount / "outer" / "memory.max").write_text(f"{512 * memory.MIB}\n")
    (inner / "memory.max").write_text("max\n")
    (inner / "memory.current").write_text(f"{300 * memory.MIB}\n")
    (inner / "memory.stat").write_text(f"anon 1\ninactive_file {100 * memory.MIB}\nactive_file 5\n")
    cg = memory.find_cgroup(root)
    assert cg == memory.Cgroup(2, inner, 512 * memory.MIB)
    assert memory.cgroup_usage(cg) == 200 * memory.MIB  # the page cache the kernel can drop is not counted
    budget = MemoryBudget.from_env(None, root)
    assert budget.limit == int(512 * memory.MIB * 0.9) and "cgroup memory limit (512 MiB)" in budget.source
    assert budget.usage() == 200 * memory.MIB
    assert budget.refuse_before("m", 10 * memory.MIB) is None
    refusal = budget.refuse_before("m", 400 * memory.MIB)
    assert refusal is not None and "model 'm'" in refusal and "460.8 MiB" in refusal
    explicit = MemoryBudget.from_env(100, root)
    assert explicit.limit == 100 * memory.MIB and explicit.source == "SMBYOC_MME_MEMORY_BUDGET_MB=100"
    assert explicit.refuse_after("m") is not None and "the model was unloaded" in str(explicit.refuse_after("m"))


def test_cgroup_namespace_root_and_v1(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/docker/abc\n")  # inside a container's cgroup namespace: the mount is it
    mount = root / "sys/fs/cgroup"
    mount.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("memory\n")
    (mount / "memory.max").write_text("max\n")
    assert memory.find_cgroup(root) == memory.Cgroup(2, mount, None)

    v1root = fake_root(tmp_path / "v1", "4:memory:/job\n0::/\n")
    v1 = v1root / "sys/fs/cgroup/memory"
    (v1 / "job").mkdir(parents=True)
    (v1 / "memory.usage_in_bytes").write_text("1\n")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "job" / "memory.limit_in_bytes").write_text(f"{64 * memory.MIB}\n")
    (v1 / "job" / "memory.usage_in_bytes").write_text(f"{40 * memory.MIB}\n")
    (v1 / "job" / "memory.stat").write_text(f"inactive_file 1\ntotal_inactive_file {8 * memory.MIB}\n")
    cg = memory.find_cgroup(v1root)
    assert cg == memory.Cgroup(1, v1 / "job", 64 * memory.MIB)
    assert memory.cgroup_usage(cg) == 32 * memory.MIB


def test_without_a_limit_the_budget_is_memtotal_and_usage_the_process_group(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    proc = root / "proc"
    for pid, pgrp, pss_kib, rss_pages in ((10, 7, 1000, None), (11, 7, None, 50), (12, 99, 5000, None)):
        d = proc / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (odd) name (x)) S 1 {pgrp} {pgrp} 0 -1\n")
        if pss_kib is not None:
            (d / "smaps_rollup").write_text(f"00-ff ---p [rollup]\nRss: 9999 kB\nPss:  {pss_kib} kB\n")
        if rss_pages is not None:
            (d / "statm").write_text(f"900 {rss_pages} 3 0 0 0 0\n")
    assert memory.find_cgroup(root) is None
    page_size = os.sysconf("SC_PAGE_SIZE")
    assert memory.process_group_usage(7, root) == 1000 * 1024 + 50 * page_size
    budget = MemoryBudget.from_env(None, root)
    assert budget.limit == int(2048000 * 1024 * 0.9) and budget.source.startswith("90% of MemTotal")
    assert "process group" in budget.meter


def test_the_real_process_group_and_directory_size(tmp_path: Path) -> None:
    # This process's group (its leader and the leader's children) is measured; not a size floor: the host's
    # reclaimer may have paged most of an idle process out, and PSS then reads a few hundred KiB.
    assert Path(f"/proc/{os.getpgrp()}") in memory.group_members(os.getpgrp(), Path("/"))
    assert memory.process_group_usage() > 0 and memory.process_group_usage(precise=False) > 0
    assert MemoryBudget.from_env(None).limit > 0
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a").write_bytes(b"x" * 1000)
    (tmp_path / "m" / "sub" / "b").write_bytes(b"x" * 24)
    (tmp_path / "m" / "link").symlink_to(tmp_path / "m" / "a")
    assert memory.directory_size(tmp_path / "m") == 2024
    memory.release_memory()  # callable everywhere (malloc_trim where glibc has it)


def test_a_change_wakes_the_sibling_workers(ml: Path, registry: Path, tmp_path: Path) -> None:
    from smbyoc.serving.wsgi import sibling_workers

    w = Worker(make_env(ml), registry, "flask")
    changes: list[str] = []
    w.mme.on_change = lambda: changes.append("changed")
    url = write_model(ml, "a", files={"code/helper.py": "SCALE = 1\n"})
    assert w.load("a", url).status_code == 200 and changes == ["changed"]
    assert error(w.load("a", url))[0] == 409 and changes == ["changed"]  # no change, no wake-up
    assert w.client.delete("/models/a").status_code == 200 and changes == ["changed"] * 2

    proc = tmp_path / "proc"
    (proc / "100" / "task" / "100").mkdir(parents=True)
    (proc / "100" / "task" / "100" / "children").write_text("101 102 103 ")
    assert sibling_workers(100, 102, str(proc)) == [101, 103]
    for pid, ppid in ((201, 200), (202, 200), (203, 1)):  # no children file: the parents in stat
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_text(f"{pid} (gunicorn: worker [x]) S {ppid} 7 7\n")
    assert sibling_workers(200, 201, str(proc)) == [202]


def test_the_group_leaders_children_are_read_before_all_of_proc(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    proc = root / "proc"
    page = os.sysconf("SC_PAGE_SIZE")
    for pid, pages in ((20, 10), (21, 5), (30, 1000)):  # 20 leads group 20, 21 is its worker, 30 is in it too
        d = proc / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (gunicorn) S 1 20 20 0 -1\n")
        (d / "statm").write_text(f"900 {pages} 3 0 0 0 0\n")
    (proc / "20" / "task" / "20").mkdir(parents=True)
    (proc / "20" / "task" / "20" / "children").write_text("21 ")
    # the children file names the members: pid 30 (not a child of the leader) is not visited
    assert memory.process_group_usage(20, root, precise=False) == 15 * page
    (proc / "20" / "task" / "20" / "children").unlink()
    assert memory.process_group_usage(20, root, precise=False) == 1015 * page  # the scan finds all three


def test_a_cheap_bound_under_the_budget_skips_the_precise_measurement() -> None:
    measured: list[int] = []

    def precise() -> int:
        measured.append(1)
        return 5_000

    budget = MemoryBudget(10_000, "test", "fake", precise, bound=lambda: 1_000)
    assert budget.refuse_before("m", 2_000) is None and budget.refuse_after("m") is None
    assert measured == []
    near = MemoryBudget(10_000, "test", "fake", precise, bound=lambda: 9_000)
    assert near.refuse_before("m", 2_000) is None  # the bound says maybe not: PSS (5,000 + 2,000) decides
    assert measured == [1]
    assert "out of memory" in (near.refuse_before("m", 6_000) or "")
