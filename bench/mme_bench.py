"""Multi-model endpoints: smbyoc `serve` vs sagemaker-inference + multi-model-server (MMS), both behind the
emulator's platform side; and the cost of a hop in a Serial inference pipeline.

Everything runs as local processes on 127.0.0.1 (no Docker).

Part 1, multi-model endpoints (MME). --models archives (default 20) in one directory standing for the S3
prefix, each the default example's model.onnx with `code/inference.py` = bench/serve_it/mme_inference.py (a
sagemaker-inference module: model_fn opens an onnxruntime session, predict_fn runs it), optionally padded with
--weight-mb of weights that model_fn reads. The same archives, unchanged, for every server:

* smbyoc: `python -m smbyoc.serving.main` with SAGEMAKER_MULTI_MODEL=true, SAGEMAKER_MODEL_SERVER_WORKERS=2
  (2 gunicorn workers, each holding its own copy of every model it served);
* MMS 1w: sagemaker-inference's own `start_model_server()` with SAGEMAKER_MULTI_MODEL=true
  (bench/serve_it/start_it.py; handler service sagemaker_inference.default_handler_service), without
  SAGEMAKER_MODEL_SERVER_WORKERS: its MME config's default_workers_per_model=1, one Python process per model;
* MMS 2w: the same with SAGEMAKER_MODEL_SERVER_WORKERS=2 (sagemaker-inference then writes
  default_workers_per_model=2 after the MME default: two Python processes per model).

sagemaker-inference cannot import a model's own `code/inference.py` in multi-model mode (its handler service
puts `<model_dir>/code` into os.environ["PYTHONPATH"] inside the already running worker, where it no longer
changes sys.path; the default model_fn then raises "Please provide a model_fn implementation"). MMS therefore
gets the same file as the image's module (PYTHONPATH of the server, as an image would bake it in); smbyoc
imports each archive's `code/inference.py`. The code run per request is the same file.

Both servers are driven through the same platform side, smbyoc's MultiModelRouter behind the endpoint front
(contract.md section 5: POST /models, POST /models/<name>/invoke, DELETE /models/<name>, 507 -> unload the
least recently used model) with max_loaded=--max-loaded (5); raw numbers talk to the container directly.
Per server and round (a fresh container, front and model cache each time):

1. cold: the first --cold models invoked one after the other through the front (time to the first prediction:
   extraction into the cache, POST /models, the invoke); the first max_loaded land in free slots, the others
   first unload the least recently used model;
2. warm: wrk on one loaded model through the front (X-Amzn-SageMaker-Target-Model), concurrency 1 and 8;
3. eviction under load: wrk at concurrency 8 for --evict-duration s, every request naming one of all the models
   (uniformly at random, or round-robin with --pattern rr) from a Lua request() function, max_loaded models held;
4. raw: front stopped, every model unloaded; --raw-cold models loaded with POST /models then invoked directly
   (/models/<name>/invoke), then wrk on one of them at concurrency 1 and 8.

Part 2, Serial pipeline hop cost (process mode, MultiContainerEndpoint; smbyoc `serve` with 2 workers per
container): the model container alone (the default model's model.onnx, smbyoc's default ONNX handler), the same
through the front in Direct mode, a Serial pipeline identity -> model, and identity -> identity -> model
(bench/serve_it/identity.py answers its request body unchanged). wrk at concurrency 1 and 8.

Rounds: --reps, the servers (configurations) interleaved inside each round with the order rotated; cells are
medians over rounds. Before the rounds: the load generator's own ceiling (the eviction Lua script against
nginx answering a fixed 200) and the front's (a router that answers from memory).

    sh bench/setup_bench_venv.sh && scripts/setup-bench-tools
    .venv/bin/python bench/mme_bench.py --it-python /tmp/bench-venv/bin/python [--reps 3 --duration 4]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import (  # the serving benchmark's helpers
    IT_DIR,
    MODELS,
    Server,
    compile_smbyoc,
    free_port,
    load_avg,
    request,
    start_fixed_nginx,
)

WORKERS = 2
BODY = MODELS["default"].json_body
JSON = "application/json"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
TARGET_CONTAINER = "X-Amzn-SageMaker-Target-Container-Hostname"
KINDS = {"smbyoc": "smbyoc", "mms1": "MMS 1w", "mms2": "MMS 2w"}
WRK_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


# ------------------------------------------------------------------------------------------------- models
def default_onnx() -> bytes:
    """The default example's model.onnx (its model.tar.gz trained once and cached by smbyoc)."""
    from smbyoc.emulator.default_model import default_model

    with tarfile.open(default_model("process")) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        return member.read()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def make_archives(prefix: Path, onnx_model: bytes, count: int, weight_mb: float) -> list[str]:
    """``count`` model.tar.gz under ``prefix``: model.onnx, code/inference.py, optionally weights.npy."""
    import numpy as np

    prefix.mkdir(parents=True)
    code = (IT_DIR / "mme_inference.py").read_bytes()
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        name = f"model-{i:02d}.tar.gz"
        with tarfile.open(prefix / name, "w:gz", compresslevel=1) as tar:
            _add(tar, "model.onnx", onnx_model)
            _add(tar, "code", None)
            _add(tar, "code/inference.py", code)
            if weight_mb > 0:
                buffer = io.BytesIO()
                np.save(buffer, rng.random(int(weight_mb * 2**20) // 4, dtype=np.float32))
                _add(tar, "weights.npy", buffer.getvalue())
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------ servers
def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_"))}


def start_container(kind: str, root: Path, work: Path, it_python: str) -> Server:
    """A multi-model container over ``root`` (its model cache is ``root/models``)."""
    (root / "models").mkdir(parents=True)
    port = free_port()
    env = {**_base_env(), "SAGEMAKER_BASE_DIR": str(root), "SAGEMAKER_MULTI_MODEL": "true",
           "SAGEMAKER_BIND_TO_PORT": str(port)}
    if kind == "smbyoc":
        env.update({"SMBYOC_SERVE_HOST": "127.0.0.1", "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS)})
        argv = [sys.executable, "-m", "smbyoc.serving.main"]
    else:
        image_code = work / "image-code"  # what an image would bake in (see the module docstring)
        image_code.mkdir()
        shutil.copy(IT_DIR / "mme_inference.py", image_code / "inference.py")
        for sub in ("tmp", "logs"):
            (work / sub).mkdir()
        env.update({"TMPDIR": str(work / "tmp"), "LOG_LOCATION": str(work / "logs"),
                    "METRICS_LOCATION": str(work / "logs"), "PYTHONPATH": str(image_code),
                    "PATH": f"{Path(it_python).parent}:{os.environ['PATH']}"})
        if kind == "mms2":
            env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(WORKERS)
        argv = [it_python, str(IT_DIR / "start_it.py"), str(work / "sagemaker-mms.properties")]
    log = open(work / "serve.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True, cwd=work)
    log.close()
    return Server(kind, port, proc, work)


def wait_ping(server: Server, timeout: float = 120) -> float:
    began = time.monotonic()
    while request(server.port, "GET", "/ping", timeout=1)[0] != 200:
        if server.proc.poll() is not None or time.monotonic() - began > timeout:
            tail = (server.work / "serve.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.kind} did not answer /ping (exit {server.proc.returncode}):\n{tail}")
        time.sleep(0.02)
    return time.monotonic() - began


class NullRouter:
    """The front's ceiling: every invocation answered from memory."""

    async def open(self, session: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def invoke(self, call: Any) -> Any:
        from smbyoc.emulator.front import Reply

        return Reply(200, b"[[0.0, 0.0, 0.0, 1.0]]", {"Content-Type": JSON})


@contextlib.contextmanager
def front_for(router: Any) -> Iterator[int]:
    from smbyoc.emulator.front import Front

    front = Front(router, host="127.0.0.1", port=free_port())
    front.start()
    try:
        yield front.port
    finally:
        front.stop()


# --------------------------------------------------------------------------------------------------- load
def lua_fixed(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{BODY.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in {"Content-Type": JSON, "Accept": JSON, **headers}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lua_targets(path: Path, names: list[str], pattern: str) -> Path:
    """A request() naming one of ``names`` per request (random with a fixed seed per thread, or round-robin)."""
    quoted = ", ".join(f'"{n}"' for n in names)
    path.write_text(f"""
local names = {{{quoted}}}
local n = #names
local body = [==[{BODY.decode()}]==]
local pattern = "{pattern}"
local made = 0
local counter = 0
function setup(thread)
  thread:set("tid", made)
  made = made + 1
end
function init(args)
  math.randomseed(1000 + tid)
  counter = tid * 7
end
function request()
  local name
  if pattern == "rr" then
    counter = counter + 1
    name = names[(counter % n) + 1]
  else
    name = names[math.random(n)]
  end
  return wrk.format("POST", nil, {{["Content-Type"] = "{JSON}", ["Accept"] = "{JSON}",
                                   ["{TARGET_MODEL}"] = name}}, body)
end
""")
    return path


def run_wrk(url: str, script: Path, conc: int, duration: float, timeout: int = 10) -> dict[str, Any]:
    ran = subprocess.run(
        ["wrk", f"-t{min(2, conc)}", f"-c{conc}", f"-d{duration:g}s", f"--timeout={timeout}s", "--latency",
         "-s", str(script), url],
        check=False, capture_output=True, text=True, timeout=duration + timeout + 30,
    )
    if ran.returncode != 0:
        raise RuntimeError(f"wrk failed ({ran.returncode}): {ran.stderr.strip()}")
    out = ran.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = {int(q): float(v) * UNIT[u] for q, v, u in WRK_LINE.findall(out)}
    if found is None or 99 not in lat:
        raise RuntimeError(f"wrk gave no result:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {"rps": float(found.group(1)), "p50": lat[50], "p99": lat[99], "requests": int(done.group(1)) if done else 0,
            "non2xx": int(bad.group(1)) if bad else 0,
            "errors": sum(map(int, errors.groups())) if errors else 0}


def invoke(port: int, path: str, headers: dict[str, str], timeout: float = 120) -> tuple[float, int, bytes]:
    began = time.perf_counter()
    status, payload = request(port, "POST", path, BODY, {"Content-Type": JSON, "Accept": JSON, **headers},
                              timeout=timeout)
    return (time.perf_counter() - began) * 1e3, status, payload


def check(status: int, payload: bytes, expected: list[Any], what: str) -> None:
    if status != 200:
        raise RuntimeError(f"{what}: {status} {payload[:500]!r}")
    answer = json.loads(payload)
    if not expected:
        expected.append(answer)
    elif answer != expected[0]:
        raise RuntimeError(f"{what}: answered {answer}, expected {expected[0]}")


def fmt_load(r: dict[str, Any]) -> str:
    return (f"{r['rps']:8.0f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  non-2xx {r['non2xx']}  "
            f"errors {r['errors']}")


# ------------------------------------------------------------------------------------------- part 1: MME
def mme_round(kind: str, rep: int, names: list[str], prefix: Path, args: argparse.Namespace, work: Path,
              expected: list[Any]) -> dict[str, Any]:
    from smbyoc.emulator.multi_model import ModelSource, MultiModelRouter, model_key

    here = work / f"{kind}-{rep}"
    here.mkdir()
    root = here / "opt_ml"
    server = start_container(kind, root, here, args.it_python)
    out: dict[str, Any] = {}
    try:
        out["ping_s"] = wait_ping(server)
        router = MultiModelRouter(ModelSource(prefix), f"http://127.0.0.1:{server.port}", root / "models",
                                  container_models_dir=str(root / "models"), max_loaded=args.max_loaded)
        with front_for(router) as front:
            url = f"http://127.0.0.1:{front}/invocations"
            # 1. cold
            cold = []
            for name in names[: args.cold]:
                ms, status, payload = invoke(front, "/invocations", {TARGET_MODEL: name})
                check(status, payload, expected, f"{kind} cold {name}")
                cold.append(ms)
            out["cold_free"] = cold[: args.max_loaded]
            out["cold_evict"] = cold[args.max_loaded:]
            # 2. warm: the most recently loaded model, every worker primed
            warm = names[args.cold - 1]
            for _ in range(20):
                check(*invoke(front, "/invocations", {TARGET_MODEL: warm})[1:], expected, f"{kind} prime")
            script = lua_fixed(here / "warm.lua", {TARGET_MODEL: warm})
            run_wrk(url, script, 8, args.warmup)  # uncounted (a JVM's JIT, the workers' first requests)
            for conc in (1, 8):
                out[f"front_c{conc}"] = r = run_wrk(url, script, conc, args.duration)
                print(f"   {KINDS[kind]:7s} warm via front c={conc}  {fmt_load(r)}", flush=True)
            # 3. eviction under load
            before = (router.counters.loads, router.counters.evictions)
            script = lua_targets(here / "evict.lua", names, args.pattern)
            r = run_wrk(url, script, 8, args.evict_duration, timeout=30)
            r["loads"] = router.counters.loads - before[0]
            r["evictions"] = router.counters.evictions - before[1]
            r["loads_per_s"] = r["loads"] / args.evict_duration
            out["evict"] = r
            print(f"   {KINDS[kind]:7s} eviction c=8      {fmt_load(r)}  loads {r['loads']}  "
                  f"evictions {r['evictions']}", flush=True)
            check(*invoke(front, "/invocations", {TARGET_MODEL: names[0]})[1:], expected, f"{kind} after eviction")
        # 4. raw: unload everything, then load and invoke directly
        status, listing = request(server.port, "GET", "/models", timeout=10)
        assert status == 200, (status, listing[:300])
        for model in json.loads(listing)["models"]:
            request(server.port, "DELETE", f"/models/{model['modelName']}", timeout=30)
        raw_load, raw_first = [], []
        keys = [model_key(n) for n in names[: args.cold]][-args.raw_cold:]
        for key in keys:
            spec = json.dumps({"model_name": key, "url": str(root / "models" / key / "model")}).encode()
            began = time.perf_counter()
            status, payload = request(server.port, "POST", "/models", spec, {"Content-Type": JSON}, timeout=120)
            loaded = time.perf_counter()
            assert status == 200, (kind, status, payload[:300])
            ms, status, payload = invoke(server.port, f"/models/{key}/invoke", {})
            check(status, payload, expected, f"{kind} raw first invoke")
            raw_load.append((loaded - began) * 1e3)
            raw_first.append((time.perf_counter() - began) * 1e3)
        out["raw_load"], out["raw_first"] = raw_load, raw_first
        for _ in range(20):
            check(*invoke(server.port, f"/models/{keys[-1]}/invoke", {})[1:], expected, f"{kind} raw prime")
        script = lua_fixed(here / "raw.lua", {})
        run_wrk(f"http://127.0.0.1:{server.port}/models/{keys[-1]}/invoke", script, 8, args.warmup)
        for conc in (1, 8):
            out[f"raw_c{conc}"] = r = run_wrk(f"http://127.0.0.1:{server.port}/models/{keys[-1]}/invoke", script,
                                              conc, args.duration)
            print(f"   {KINDS[kind]:7s} warm raw c={conc}        {fmt_load(r)}", flush=True)
        print(f"   {KINDS[kind]:7s} cold via front: free slot {statistics.median(out['cold_free']):.1f} ms, "
              f"with an eviction {statistics.median(out['cold_evict'] or [0]):.1f} ms; raw POST /models "
              f"{statistics.median(raw_load):.1f} ms, + first invoke {statistics.median(raw_first):.1f} ms",
              flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def ceilings(work: Path, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    d = work / "ceiling-nginx"
    d.mkdir()
    nginx = start_fixed_nginx(d, b"[[0.0, 0.0, 0.0, 1.0]]")
    out: dict[str, Any] = {}
    try:
        wait_ping(nginx, 10)
        script = lua_targets(work / "ceiling.lua", names, args.pattern)
        out["wrk_lua"] = run_wrk(f"http://127.0.0.1:{nginx.port}/invocations", script, 8, 3)
    finally:
        nginx.stop()
    with front_for(NullRouter()) as front:
        script = lua_fixed(work / "null.lua", {TARGET_MODEL: names[0]})
        for conc in (1, 8):
            out[f"front_c{conc}"] = run_wrk(f"http://127.0.0.1:{front}/invocations", script, conc, 3)
    print(f"   wrk + the eviction Lua script vs nginx 200, c=8: {fmt_load(out['wrk_lua'])}")
    print(f"   the front with a router answering from memory, c=1: {fmt_load(out['front_c1'])}")
    print(f"   the front with a router answering from memory, c=8: {fmt_load(out['front_c8'])}", flush=True)
    return out


# ---------------------------------------------------------------------------------- part 2: pipeline hops
def pipeline(args: argparse.Namespace, work: Path, onnx_model: bytes, expected: list[Any]) -> dict[str, Any]:
    from smbyoc.emulator.multi_container import ContainerSpec, MultiContainerEndpoint, MultiContainerSpec

    os.environ["SMBYOC_STATE_DIR"] = str(work / "state")  # endpoint records: not the user's
    identity = work / "identity-model"
    (identity / "code").mkdir(parents=True)
    shutil.copy(IT_DIR / "identity.py", identity / "code" / "inference.py")
    model = work / "onnx-model"
    model.mkdir()
    (model / "model.onnx").write_bytes(onnx_model)  # no code/: smbyoc's default ONNX handler
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS)}

    def spec(mode: str, *containers: tuple[Path, str]) -> MultiContainerSpec:
        return MultiContainerSpec(tuple(ContainerSpec(model_data=p, hostname=h) for p, h in containers),
                                  execution_mode=mode, backend="process", port=free_port(), environment=env,
                                  startup_health_timeout=120)

    endpoints = {
        "direct": MultiContainerEndpoint(spec("Direct", (identity, "identity"), (model, "model")), sink=None,
                                         require_nginx=True),
        "serial2": MultiContainerEndpoint(spec("Serial", (identity, "identity"), (model, "model")), sink=None,
                                          require_nginx=True),
        "serial3": MultiContainerEndpoint(spec("Serial", (identity, "identity"), (identity, "identity2"),
                                               (model, "model")), sink=None, require_nginx=True),
    }
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for endpoint in endpoints.values():
            endpoint.start()
        targets = {
            "identity": (endpoints["direct"].members[0].url, {}),
            "alone": (endpoints["direct"].members[1].url, {}),
            "direct": (endpoints["direct"].url, {TARGET_CONTAINER: "model"}),
            "serial2": (endpoints["serial2"].url, {}),
            "serial3": (endpoints["serial3"].url, {}),
        }
        scripts = {}
        for name, (url, headers) in targets.items():
            port = int(url.rsplit(":", 1)[1])
            for _ in range(20):  # the identity container answers the request body itself
                answer = [json.loads(BODY)] if name == "identity" else expected
                check(*invoke(port, "/invocations", headers)[1:], answer, f"pipeline {name}")
            scripts[name] = lua_fixed(work / f"pipe-{name}.lua", headers)
        order = list(targets)
        for rep in range(args.reps):
            print(f"-- pipeline round {rep + 1}/{args.reps}  load {load_avg()}", flush=True)
            for conc in (1, 8):
                for name in order:
                    r = run_wrk(targets[name][0] + "/invocations", scripts[name], conc, args.duration)
                    runs.setdefault((name, conc), []).append(r)
                    print(f"   {name:8s} c={conc}  {fmt_load(r)}", flush=True)
            order = order[1:] + order[:1]
    finally:
        for endpoint in endpoints.values():
            endpoint.close()
    return {f"{name} c{conc}": rs for (name, conc), rs in runs.items()}


# ---------------------------------------------------------------------------------------------- reporting
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(results: dict[str, Any]) -> str:
    rounds: dict[str, list[dict[str, Any]]] = results.get("mme") or {}
    lines = mme_tables(rounds) if rounds else []
    return "\n".join(lines + pipeline_tables(results.get("pipeline")))


def mme_tables(rounds: dict[str, list[dict[str, Any]]]) -> list[str]:
    kinds = list(rounds)

    def cell(kind: str, key: str, field: str) -> float:
        return med([r[key][field] for r in rounds[kind]])

    def pooled(kind: str, key: str) -> float:
        return med([v for r in rounds[kind] for v in r[key]])

    lines = ["| server | cold via front, free slot | cold via front, after an eviction | raw POST /models "
             "| raw POST /models + first invoke |", "|---|---|---|---|---|"]
    for k in kinds:
        lines.append(f"| {KINDS[k]} | {pooled(k, 'cold_free'):.0f} ms | {pooled(k, 'cold_evict'):.0f} ms "
                     f"| {pooled(k, 'raw_load'):.0f} ms | {pooled(k, 'raw_first'):.0f} ms |")
    lines += ["", "| server | path | c=1 req/s | c=1 p50 / p99 ms | c=8 req/s | c=8 p50 / p99 ms |",
              "|---|---|---|---|---|---|"]
    for k in kinds:
        for path in ("front", "raw"):
            c1, c8 = f"{path}_c1", f"{path}_c8"
            lines.append(f"| {KINDS[k]} | {'via front' if path == 'front' else 'container'} "
                         f"| {cell(k, c1, 'rps'):,.0f} | {cell(k, c1, 'p50'):.2f} / {cell(k, c1, 'p99'):.2f} "
                         f"| {cell(k, c8, 'rps'):,.0f} | {cell(k, c8, 'p50'):.2f} / {cell(k, c8, 'p99'):.2f} |")
    lines += ["", "| server | req/s | p50 ms | p99 ms | loads/s | loads / evictions (median per run) "
              "| non-2xx / socket errors (all runs) |", "|---|---|---|---|---|---|---|"]
    for k in kinds:
        ev = [r["evict"] for r in rounds[k]]
        lines.append(f"| {KINDS[k]} | {cell(k, 'evict', 'rps'):,.1f} | {cell(k, 'evict', 'p50'):.1f} "
                     f"| {cell(k, 'evict', 'p99'):.1f} | {cell(k, 'evict', 'loads_per_s'):.1f} "
                     f"| {med([e['loads'] for e in ev]):.0f} / {med([e['evictions'] for e in ev]):.0f} "
                     f"| {sum(e['non2xx'] for e in ev)} / {sum(e['errors'] for e in ev)} |")
    if "smbyoc" in rounds:
        lines += ["", "| smbyoc vs | eviction req/s | warm p99 via front c=1 / c=8 | warm p99 container c=1 / c=8 |",
                  "|---|---|---|---|"]
        for k in kinds:
            if k == "smbyoc":
                continue
            ratio = {key: cell("smbyoc", key, "p99") / cell(k, key, "p99")
                     for key in ("front_c1", "front_c8", "raw_c1", "raw_c8")}
            lines.append(f"| {KINDS[k]} | **{cell('smbyoc', 'evict', 'rps') / cell(k, 'evict', 'rps'):.1f}x** "
                         f"| **{ratio['front_c1']:.2f} / {ratio['front_c8']:.2f}** "
                         f"| **{ratio['raw_c1']:.2f} / {ratio['raw_c8']:.2f}** |")
    return lines


def pipeline_tables(pipe: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    if not pipe:
        return []

    def p(name: str, conc: int, field: str) -> float:
        return med([r[field] for r in pipe[f"{name} c{conc}"]])

    labels = {"identity": "identity container alone", "alone": "model container alone",
              "direct": "Direct via the front", "serial2": "Serial identity → model",
              "serial3": "Serial identity → identity → model"}
    lines = ["| path | c=1 req/s | c=1 p50 / p99 ms | c=8 req/s | c=8 p50 / p99 ms |", "|---|---|---|---|---|"]
    for name, label in labels.items():
        lines.append(f"| {label} | {p(name, 1, 'rps'):,.0f} | {p(name, 1, 'p50'):.2f} / {p(name, 1, 'p99'):.2f} "
                     f"| {p(name, 8, 'rps'):,.0f} | {p(name, 8, 'p50'):.2f} / {p(name, 8, 'p99'):.2f} |")
    lines += ["", "| added by | c=1 p50 / p99 ms | c=8 p50 / p99 ms |", "|---|---|---|"]
    for label, (a, b) in {"the front (Direct - alone)": ("direct", "alone"),
                          "hop 1: identity container (Serial 2 - Direct)": ("serial2", "direct"),
                          "hop 2: another identity (Serial 3 - Serial 2)": ("serial3", "serial2")}.items():
        lines.append(f"| {label} | {p(a, 1, 'p50') - p(b, 1, 'p50'):.2f} / {p(a, 1, 'p99') - p(b, 1, 'p99'):.2f} "
                     f"| {p(a, 8, 'p50') - p(b, 8, 'p50'):.2f} / {p(a, 8, 'p99') - p(b, 8, 'p99'):.2f} |")
    return lines


# --------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--it-python", default=os.environ.get("BENCH_IT_PYTHON", "/tmp/bench-venv/bin/python"))
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--duration", type=float, default=4, help="seconds per warm wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of uncounted load before the warm runs")
    parser.add_argument("--evict-duration", type=float, default=10, help="seconds of the eviction run")
    parser.add_argument("--models", type=int, default=20, help="model archives under the prefix")
    parser.add_argument("--max-loaded", type=int, default=5, help="the router's max_loaded (the budget)")
    parser.add_argument("--cold", type=int, default=10, help="models timed cold per round (the first "
                        "--max-loaded into free slots, the rest after an eviction)")
    parser.add_argument("--raw-cold", type=int, default=3, help="models loaded directly per round")
    parser.add_argument("--pattern", choices=["random", "rr"], default="random",
                        help="which model each request of the eviction run names")
    parser.add_argument("--weight-mb", type=float, default=0, help="weights.npy added to every model (MiB)")
    parser.add_argument("--servers", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--parts", nargs="+", choices=["mme", "pipeline"], default=["mme", "pipeline"])
    parser.add_argument("--json-out", type=Path, help="write the raw results here")
    args = parser.parse_args()
    if not args.max_loaded < args.cold <= args.models or args.raw_cold > args.cold:
        sys.exit("need --max-loaded < --cold <= --models and --raw-cold <= --cold")
    for tool in ("wrk", "nginx", "java"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on PATH (scripts/setup-bench-tools; /usr/sbin for nginx)")
    if "mme" in args.parts and {"mms1", "mms2"} & set(args.servers) and not Path(args.it_python).exists():
        sys.exit(f"--it-python {args.it_python} does not exist (sh bench/setup_bench_venv.sh)")
    compile_smbyoc()
    began = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_avg(), "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
    }
    expected: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="smbyoc-mme-bench-") as tmp:
        work = Path(tmp)
        onnx_model = default_onnx()
        if "mme" in args.parts:
            names = make_archives(work / "prefix", onnx_model, args.models, args.weight_mb)
            print(f"== ceilings  load {load_avg()}", flush=True)
            results["ceilings"] = ceilings(work, names, args)
            rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in args.servers}
            order = list(args.servers)
            for rep in range(args.reps):
                print(f"== MME round {rep + 1}/{args.reps}  load {load_avg()}", flush=True)
                for kind in order:
                    rounds[kind].append(mme_round(kind, rep, names, work / "prefix", args, work, expected))
                order = order[1:] + order[:1]
            results["mme"] = rounds
        if "pipeline" in args.parts:
            print(f"== pipeline  load {load_avg()}", flush=True)
            results["pipeline"] = pipeline(args, work, onnx_model, [])
    results["load_after"] = load_avg()
    results["seconds"] = time.monotonic() - began
    print("\n" + summarize(results))
    c = results.get("ceilings")
    if c:
        print(f"\nceilings: wrk + Lua vs nginx 200 c=8 {c['wrk_lua']['rps']:,.0f} req/s; the front answering from "
              f"memory c=1 {c['front_c1']['rps']:,.0f} req/s (p50 {c['front_c1']['p50']:.2f} ms), "
              f"c=8 {c['front_c8']['rps']:,.0f} req/s (p50 {c['front_c8']['p50']:.2f} ms)")
    print(f"started {results['started']}; load average before {results['load_before']}, after "
          f"{results['load_after']}; {results['seconds']:.0f} s in all")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
