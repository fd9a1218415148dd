"""Serving benchmark: smbyoc `serve` vs sagemaker-inference (multi-model-server) vs nginx answering a fixed 200.

Everything listens on 127.0.0.1 and every load targets 127.0.0.1. For each model (a 4x3 MatMul ONNX model,
the reference's shape, and the default example's model.onnx without its code/ dir, so smbyoc's default ONNX
handler serves it):

1. start-up: each server is started --starts times (interleaved), timing process start -> first 200 on
   /ping and -> first 200 on POST /invocations (polling every 10 ms, a fresh connection per poll);
2. load: `wrk --latency` POSTing one row (JSON or CSV, Accept = the same type) at concurrency 1, 8, 32,
   --reps rounds with the servers interleaved inside each round; meanwhile a Python thread GETs /ping every
   50 ms on fresh connections. Reported: medians over rounds of req/s, p50, p99; /ping p50/p99/max pooled.

Both model servers run 2 workers (SAGEMAKER_MODEL_SERVER_WORKERS=2, 1 onnxruntime intra-op thread each).
sagemaker-inference runs from a separate venv (--it-python; needs sagemaker-inference, multi-model-server,
onnxruntime, numpy) and java; it is started by its own `start_model_server()` (bench/serve_it/start_it.py).

    .venv/bin/python bench/serve_bench.py --it-python /tmp/bench-venv/bin/python [--duration 5 --reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IT_DIR = ROOT / "bench" / "serve_it"
WORKERS = 2


# ----------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A free port below 32768 (multi-model-server rejects some ephemeral-range ports as invalid)."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def compile_smbyoc() -> None:
    """Byte-compile smbyoc as pip does when it installs the wheel into an image. From an editable install
    with PYTHONDONTWRITEBYTECODE set (as on these machines) every start would recompile it (~0.1 s)."""
    import compileall

    import smbyoc

    compileall.compile_dir(Path(smbyoc.__file__).parent, quiet=1, rx=re.compile("/examples/"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------------------ models
def make_matmul_model(path: Path) -> None:
    """y = x @ W with x: [batch, 4] float32, W: 4x3 — the reference figures' model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        "matmul4x3",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def default_model_onnx(target: Path, model_tar: Path | None, work: Path) -> None:
    """The default example's model.onnx, from `model_tar` or trained once here with `local-train --mode process`."""
    if model_tar is None:
        subprocess.run(
            [sys.executable, "-m", "smbyoc.cli", "local-train", "--mode", "process", "-o", str(work / "train")],
            check=True,
            capture_output=True,
        )
        model_tar = next((work / "train").rglob("model.tar.gz"))
    with tarfile.open(model_tar) as tar:
        source = tar.extractfile("model.onnx")  # only model.onnx: no code/, so smbyoc's default handler serves it
        assert source is not None
        target.write_bytes(source.read())


@dataclass(frozen=True)
class Model:
    name: str
    json_body: bytes
    csv_body: bytes


MODELS = {
    "matmul4x3": Model("matmul4x3", b"[[1.0, 2.0, 3.0, 4.0]]", b"1.0,2.0,3.0,4.0\n"),
    "default": Model(
        "default", b"[[21.5, 0.8, 1012.0, 3.2, 45.0, 0.1, 12.0, 0.5]]", b"21.5,0.8,1012.0,3.2,45.0,0.1,12.0,0.5\n"
    ),
}


# ----------------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    kind: str  # smbyoc | it | nginx
    port: int
    proc: subprocess.Popen[bytes]
    work: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        # whole session (gunicorn workers, java and its python workers, nginx workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.monotonic() + 10
        while _session_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _session_alive(sid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields[3] is the session id
                return True
    return False


def start_smbyoc(
    model_file: Path, work: Path, extra_env: dict[str, str] | None = None, code: str | None = None
) -> Server:
    """`serve` over a fresh model dir holding `model_file` as model.onnx (and `code` as code/inference.py)."""
    base = work / "opt_ml"
    (base / "model").mkdir(parents=True)
    shutil.copy(model_file, base / "model" / "model.onnx")
    if code is not None:
        (base / "model" / "code").mkdir()
        (base / "model" / "code" / "inference.py").write_text(code)
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SMBYOC_SERVE_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS),
        **(extra_env or {}),
    }
    log = open(work / "serve.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smbyoc.serving.main"], env=env, stdout=log, stderr=log, start_new_session=True, cwd=work
    )
    log.close()
    return Server("smbyoc", port, proc, work)


def start_it(model_file: Path, work: Path, it_python: str) -> Server:
    base = work / "opt_ml"
    (base / "model" / "code").mkdir(parents=True)
    shutil.copy(model_file, base / "model" / "model.onnx")
    shutil.copy(IT_DIR / "inference.py", base / "model" / "code" / "inference.py")
    (work / "tmp").mkdir()
    (work / "logs").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS),
        "TMPDIR": str(work / "tmp"),
        "LOG_LOCATION": str(work / "logs"),
        "METRICS_LOCATION": str(work / "logs"),
        "PATH": f"{Path(it_python).parent}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    log = open(work / "serve.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [it_python, str(IT_DIR / "start_it.py"), str(work / "sagemaker-mms.properties")],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=work,
    )
    log.close()
    return Server("it", port, proc, work)


def start_fixed_nginx(work: Path, body: bytes) -> Server:
    """nginx with smbyoc's own rendered nginx.conf, /invocations answered by `return 200` (the front's ceiling)."""
    from smbyoc.serving.env import ServingEnv
    from smbyoc.serving.nginx import READY_FILE, nginx_argv, render_nginx_conf

    port = free_port()
    env = ServingEnv(port=port, host="127.0.0.1", workers=WORKERS)
    conf = render_nginx_conf(env, work, work / "gunicorn.sock")
    marker = "location ~ ^/(ping|invocations|execution-parameters|models(/.*)?)$ {"
    assert marker in conf, "nginx template changed; update serve_bench.py"
    conf = conf.replace(
        marker, marker + f"\n            default_type application/json;\n            return 200 '{body.decode()}';"
    )
    (work / "nginx.conf").write_text(conf)
    (work / READY_FILE).touch()
    log = open(work / "serve.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(nginx_argv(work / "nginx.conf", work), stdout=log, stderr=log, start_new_session=True)
    log.close()
    return Server("nginx", port, proc, work)


def time_startup(server: Server, began: float, body: bytes, ctype: str, timeout: float = 120) -> tuple[float, float]:
    """Seconds from `began` to the first 200 on /ping and on POST /invocations."""
    ping_at = invoke_at = None
    while ping_at is None or invoke_at is None:
        if server.proc.poll() is not None:
            tail = (server.work / "serve.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.kind} exited ({server.proc.returncode}); its log ends:\n{tail}")
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{server.kind} not ready after {timeout} s; see {server.work}/serve.log")
        if ping_at is None and request(server.port, "GET", "/ping", timeout=1)[0] == 200:
            ping_at = time.monotonic() - began
        if ping_at is not None and invoke_at is None:
            status, _ = request(
                server.port, "POST", "/invocations", body, {"Content-Type": ctype, "Accept": ctype}, timeout=5
            )
            if status == 200:
                invoke_at = time.monotonic() - began
        if ping_at is None or invoke_at is None:
            time.sleep(0.01)
    return ping_at, invoke_at


# ------------------------------------------------------------------------------------------------- load
WRK_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def lua_script(path: Path, body: bytes, ctype: str) -> None:
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = [==[{body.decode()}]==]\n'
        f'wrk.headers["Content-Type"] = "{ctype}"\nwrk.headers["Accept"] = "{ctype}"\n'
    )


def run_wrk(port: int, script: Path, conc: int, duration: int) -> dict[str, Any]:
    threads = min(2, conc)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conc}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/invocations",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {int(q): float(v) * UNIT[u] for q, v, u in WRK_LINE.findall(out)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50": lat[50],
        "p99": lat[99],
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


@contextlib.contextmanager
def pinger(port: int, every: float = 0.05) -> Iterator[list[float]]:
    """GET /ping every `every` s on a fresh connection while the block runs; latencies in ms (failures: inf)."""
    samples: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            status, _ = request(port, "GET", "/ping", timeout=2)
            samples.append((time.perf_counter() - began) * 1e3 if status == 200 else float("inf"))
            stop.wait(max(0.0, every - (time.perf_counter() - began)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(5)


# ------------------------------------------------------------------------------------------------- main
def bench_model(model: Model, model_file: Path, args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    label = model.name
    print(f"\n== {label}: start-up ({args.starts} starts each, interleaved)  load {load_avg()}", flush=True)
    starts: dict[str, list[tuple[float, float]]] = {"smbyoc": [], "it": []}
    servers: dict[str, Server] = {}
    try:
        for i in range(args.starts):
            for kind in ("smbyoc", "it"):
                d = work / f"{label}-{kind}-{i}"
                d.mkdir()
                time.sleep(1.0)  # let the previous server's teardown (a JVM's, say) finish off the CPUs first
                began = time.monotonic()
                server = start_smbyoc(model_file, d) if kind == "smbyoc" else start_it(model_file, d, args.it_python)
                try:
                    starts[kind].append(time_startup(server, began, model.json_body, "application/json"))
                finally:
                    if i < args.starts - 1:
                        server.stop()
                    else:
                        servers[kind] = server
                print(
                    f"   {kind:7s} start {i + 1}: ping 200 after {starts[kind][-1][0]:.3f} s, "
                    f"first invocation 200 after {starts[kind][-1][1]:.3f} s",
                    flush=True,
                )
        d = work / f"{label}-nginx"
        d.mkdir()
        servers["nginx"] = start_fixed_nginx(d, b"[[1.0, 2.0, 3.0]]")
        time_startup(servers["nginx"], time.monotonic(), model.json_body, "application/json", timeout=10)

        # same answers from both model servers (sanity), then warm up
        for ctype, body in (("application/json", model.json_body), ("text/csv", model.csv_body)):
            answers = {}
            for kind in ("smbyoc", "it"):
                status, payload = request(
                    servers[kind].port, "POST", "/invocations", body, {"Content-Type": ctype, "Accept": ctype}
                )
                assert status == 200, (kind, ctype, status, payload[:300])
                answers[kind] = payload
            print(f"   {ctype}: smbyoc {answers['smbyoc'][:80]!r}  it {answers['it'][:80]!r}")
        scripts = {"json": work / f"{label}-json.lua", "csv": work / f"{label}-csv.lua"}
        lua_script(scripts["json"], model.json_body, "application/json")
        lua_script(scripts["csv"], model.csv_body, "text/csv")
        for kind in ("smbyoc", "it", "nginx"):
            run_wrk(servers[kind].port, scripts["json"], 8, 1)

        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        pings: dict[tuple[str, str, int], list[float]] = {}
        kinds = ["smbyoc", "it"] + (["nginx"] if args.with_nginx else [])
        for rep in range(args.reps):
            print(f"-- {label} round {rep + 1}/{args.reps}  load {load_avg()}", flush=True)
            for fmt in args.formats:
                for conc in args.concurrency:
                    for kind in kinds:
                        if kind == "nginx" and fmt != "json":
                            continue  # the fixed answer does not depend on the body
                        with pinger(servers[kind].port) as samples:
                            r = run_wrk(servers[kind].port, scripts[fmt], conc, args.duration)
                        runs.setdefault((kind, fmt, conc), []).append(r)
                        pings.setdefault((kind, fmt, conc), []).extend(samples)
                        print(
                            f"   {kind:7s} {fmt:4s} c={conc:<3d} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                            f"p99 {r['p99']:6.2f} ms  non-2xx {r['non2xx']}  errors {r['socket_errors']}  "
                            f"ping max {max(samples or [0]):.1f} ms",
                            flush=True,
                        )
        table = []
        for (kind, fmt, conc), rs in runs.items():
            ping = pings[(kind, fmt, conc)]
            table.append(
                {
                    "model": label,
                    "server": kind,
                    "format": fmt,
                    "concurrency": conc,
                    "rps": statistics.median(r["rps"] for r in rs),
                    "p50": statistics.median(r["p50"] for r in rs),
                    "p99": statistics.median(r["p99"] for r in rs),
                    "rps_all": [r["rps"] for r in rs],
                    "p99_all": [r["p99"] for r in rs],
                    "non2xx": sum(r["non2xx"] for r in rs),
                    "socket_errors": sum(r["socket_errors"] for r in rs),
                    "ping_p50": pct(ping, 50),
                    "ping_p99": pct(ping, 99),
                    "ping_max": max(ping),
                    "ping_n": len(ping),
                }
            )
        results["load"].extend(table)
        results["startup"][label] = {
            kind: {
                "ping_all": [s[0] for s in v],
                "invoke_all": [s[1] for s in v],
                "ping": statistics.median(s[0] for s in v),
                "invoke": statistics.median(s[1] for s in v),
            }
            for kind, v in starts.items()
        }
    finally:
        for server in servers.values():
            server.stop()


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | body | conc. | smbyoc req/s | IT req/s | nginx 200 req/s | smbyoc/IT req/s | smbyoc p50 / p99 ms "
        "| IT p50 / p99 ms | p99 smbyoc/IT | /ping under load p50 / p99 / max ms, smbyoc | same, IT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {(r["model"], r["server"], r["format"], r["concurrency"]): r for r in results["load"]}
    for (model, server, fmt, conc), s in rows.items():
        if server != "smbyoc":
            continue
        it = rows[(model, "it", fmt, conc)]
        ng = rows.get((model, "nginx", "json", conc))
        lines.append(
            f"| {model} | {fmt} | {conc} | {s['rps']:,.0f} | {it['rps']:,.0f} "
            f"| {format(ng['rps'], ',.0f') if ng else '—'} "
            f"| **{s['rps'] / it['rps']:.2f}x** | {s['p50']:.2f} / {s['p99']:.2f} | {it['p50']:.2f} / {it['p99']:.2f} "
            f"| **{s['p99'] / it['p99']:.2f}** | {s['ping_p50']:.1f} / {s['ping_p99']:.1f} / {s['ping_max']:.1f} "
            f"| {it['ping_p50']:.1f} / {it['ping_p99']:.1f} / {it['ping_max']:.1f} |"
        )
    lines += [
        "",
        "| model | smbyoc start → /ping 200 | smbyoc start → first invocation 200 | IT start → /ping 200 "
        "| IT start → first invocation 200 |",
        "|---|---|---|---|---|",
    ]
    for model, st in results["startup"].items():
        s, it = st["smbyoc"], st["it"]
        lines.append(
            f"| {model} | {s['ping']:.2f} s | {s['invoke']:.2f} s | {it['ping']:.2f} s | {it['invoke']:.2f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--it-python", default=os.environ.get("BENCH_IT_PYTHON", "/tmp/bench-venv/bin/python"))
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds per configuration")
    parser.add_argument("--starts", type=int, default=3, help="timed start-ups per server and model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--formats", nargs="+", default=["json", "csv"], choices=["json", "csv"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-nginx", dest="with_nginx", action="store_false")
    parser.add_argument(
        "--default-model-tar",
        type=Path,
        help="a local-train model.tar.gz of the default example (default: train one first, ~6 s)",
    )
    parser.add_argument("--json-out", type=Path, help="write the raw results here")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "java"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on PATH")
    if not Path(args.it_python).exists():
        sys.exit(f"--it-python {args.it_python} does not exist (a venv with sagemaker-inference, multi-model-server)")
    compile_smbyoc()
    began = time.monotonic()
    results: dict[str, Any] = {"load": [], "startup": {}, "load_before": load_avg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="smbyoc-serve-bench-") as tmp:
        work = Path(tmp)
        files = {"matmul4x3": work / "matmul4x3.onnx", "default": work / "default.onnx"}
        make_matmul_model(files["matmul4x3"])
        if "default" in args.models:
            default_model_onnx(files["default"], args.default_model_tar, work)
        for name in args.models:
            bench_model(MODELS[name], files[name], args, work, results)
    results["load_after"] = load_avg()
    results["seconds"] = time.monotonic() - began
    print("\n" + markdown(results))
    print(
        f"\nload average before {results['load_before']}, after {results['load_after']}; "
        f"{results['seconds']:.0f} s in all"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
