"""What the endpoint front costs (issue 12): an endpoint config's one container called directly vs through the
front, with data capture, and with a shadow variant; and the front's HTTP server against aiohttp's.

Everything runs as local processes on 127.0.0.1 (process mode: each instance is `serve`, i.e. nginx + gunicorn
with 2 workers; no Docker). The model is the bundled default example's model.tar.gz (trained once and cached by
smbyoc: its code/inference.py and model.onnx), the body one row as JSON (`{"instances": [[8 floats]]}`),
Content-Type and Accept application/json.

Paths (the endpoints are started once and kept for all rounds):

* container: POST /invocations on endpoint B's one container, directly;
* front: endpoint B (HostedEndpoint from an endpoint config, one variant), POST /endpoints/B/invocations: the
  front as shipped (smbyoc.emulator.http_server; uvloop's event loop when installed);
* front-asyncio: the same container behind a second front built the same way (EndpointRouter, one Variant, one
  instance) on asyncio's own event loop;
* front-aiohttp: the same, with aiohttp's server (aiohttp.web, one catch-all route handing each request to the
  same Front.handle) instead of smbyoc's, on asyncio's loop: the server the front had before (bench only);
* front-null: a front whose router answers from memory (the front's own ceiling, no upstream call);
* nginx-proxy: the reference, a C proxy on the same route: nginx (one worker) proxying
  /endpoints/B/invocations to B's container (the address the front calls) over kept-alive connections, adding the
  invoked-variant header and nothing else (no capture, shadow or error reshaping): what any hop costs here;
* capture: endpoint C, like B with DataCaptureConfig at 100 % (Input and Output, JSON captured as text);
* shadow: endpoint D, one production and one shadow variant, shadow weight = production weight (every call
  copied; the shadow's processes at HostedEndpoint's default nice 19, --shadow-nice to change it); the
  latencies wrk sees are production's, and the copies sent and dropped are printed.

Load: `wrk -t2 -c8 -d{--duration}s --latency` with a Lua script that sets the method, body and headers, after
1 s of uncounted load on the same path. --reps rounds, the paths interleaved inside each round (order rotated).
Cells are medians over rounds; per-round ratios are printed too. Beside wrk's numbers: CPU per request of the
front's thread, user and system apart (/proc/self/task/<tid>/stat), of the capture writer's thread, and how busy
the machine was (/proc/stat).

No CPU pinning: the front (a thread of this process), the capture writer thread, nginx, the gunicorn workers
and wrk share the machine's CPUs as they would in `smbyoc local-serve`. With --pin instead (what the front costs
when it does not compete with the container for CPUs, as on SageMaker, where the platform's front runs elsewhere):
every production container (nginx, workers; docker mode: the container's cpuset) pinned to the last CPU, the bench
process's threads (the fronts, the capture writer), wrk and the shadow variant's containers (at their nice value or
CPU shares) to the others (docker-proxy, in the published port's path, is not pinned). --clients: no wrk; each
client alone (the upstream pool, aiohttp's, a bare Protocol that only counts bytes) making sequential calls
to B's container from 1 and 8 tasks in this thread, CPU per call from getrusage(RUSAGE_THREAD).

    scripts/setup-bench-tools       # wrk
    PATH=/usr/sbin:$PATH .venv/bin/python bench/front_bench.py [--reps 5 --duration 5] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mme_bench import run_wrk  # wrk with --latency, parsed

from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.front import Call, Front, Reply
from smbyoc.emulator.hosted_endpoint import ContainerRouter, HostedEndpoint, HostingOptions
from smbyoc.emulator.http_server import Request, Response
from smbyoc.emulator.owners import process_tree
from smbyoc.emulator.variants import EndpointRouter, Instance, Variant
from smbyoc.serving.ports import free_port

JSON = "application/json"
BODY = b'{"instances": [[21.5, 0.8, 1012.0, 3.2, 45.0, 0.1, 12.0, 0.5]]}'
PATHS = ("container", "container-network", "front", "front-published", "front-asyncio", "front-aiohttp", "front-null",
         "nginx-proxy", "capture", "shadow")
#: Paths only docker mode has: B's container at its Docker network address, and a front reaching it through its
#: published port (docker-proxy), the route the front took before HostingOptions.container_route.
DOCKER_PATHS = ("container-network", "front-published")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ fronts
class AiohttpFront(Front):
    """The front with aiohttp's server instead of smbyoc's (what it had before http_server.py), bench only: one
    catch-all route hands every request to the same :meth:`Front.handle`; asyncio's event loop."""

    async def _serve(self, ready: Any, failure: list[BaseException]) -> None:

        from aiohttp import web

        from smbyoc.emulator.upstream import UpstreamPool

        self._stopped = asyncio.Event()

        async def route(request: web.Request) -> web.Response:
            body = await request.read()
            ours = Request(request.method, request.raw_path.split("?")[0], request.query_string,
                           f"{request.version.major}.{request.version.minor}",
                           {name.lower(): value for name, value in request.headers.items()},
                           request.content_length, request.keep_alive)
            ours.body = body
            answer: Response = await self.handle(ours)
            return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_route("*", "/{tail:.*}", route)
        session = UpstreamPool()
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.router.open(session)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=1024).start()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()
            await self.router.close()
            await session.close()


class NullRouter:
    """The front's ceiling: every invocation answered from memory with the model's answer."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def open(self, session: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def invoke(self, call: Call) -> Reply:
        return Reply(200, self.answer, {"Content-Type": JSON})


# ------------------------------------------------------------------------------------------------ clients alone
class _CountingProtocol(asyncio.Protocol):
    """The floor: a keep-alive connection that writes fixed request bytes and only counts the answer's bytes."""

    def __init__(self, answer_size: int) -> None:
        self.answer_size = answer_size
        self.got = 0
        self.done: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.answer_size:
            self.got = 0
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def eof_received(self) -> bool:
        return False


def clients(url: str, reps: int = 3, calls: int = 3000) -> None:
    """CPU per call of each client alone (this thread's rusage), sequential calls from 1 and 8 tasks."""
    import resource
    import urllib.parse

    import aiohttp

    from smbyoc.emulator.upstream import UpstreamPool

    headers = {"Content-Type": JSON, "Accept": JSON}
    parts = urllib.parse.urlsplit(url)
    raw = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {JSON}\r\nAccept: {JSON}\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    with urllib.request.urlopen(urllib.request.Request(url, data=raw.split(b"\r\n\r\n", 1)[1], method="POST",
                                                       headers=headers)) as answer:
        answer_size = len(answer.read()) + sum(len(k) + len(v) + 4 for k, v in answer.headers.items()) + \
            len(f"HTTP/1.1 {answer.status} {answer.reason}\r\n\r\n")

    async def pool_calls(n: int, conc: int) -> None:
        pool = UpstreamPool()

        async def one() -> None:
            for _ in range(n):
                assert (await pool.request("POST", url, BODY, headers, timeout=30)).status == 200

        await asyncio.gather(*(one() for _ in range(conc)))
        await pool.close()

    async def aiohttp_calls(n: int, conc: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                         skip_auto_headers=("User-Agent", "Content-Type")) as session:
            async def one() -> None:
                for _ in range(n):
                    async with session.post(url, data=BODY, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=30)) as answer:
                        await answer.read()
                        assert answer.status == 200

            await asyncio.gather(*(one() for _ in range(conc)))

    async def floor_calls(n: int, conc: int) -> None:
        loop = asyncio.get_running_loop()

        async def one() -> None:
            transport, protocol = await loop.create_connection(lambda: _CountingProtocol(answer_size),
                                                               parts.hostname or "127.0.0.1", parts.port or 80)
            for _ in range(n):
                protocol.done = loop.create_future()
                transport.write(raw)
                await protocol.done
            transport.close()

        await asyncio.gather(*(one() for _ in range(conc)))

    kinds = {"upstream pool": pool_calls, "aiohttp": aiohttp_calls, "bare Protocol (floor)": floor_calls}
    print("| client alone | tasks | calls/s | user µs/call | system µs/call |\n|---|---|---|---|---|")
    for conc in (1, 8):
        rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
        for _ in range(reps):
            for name, calls_of in kinds.items():
                asyncio.run(calls_of(50, conc))  # uncounted
                before, began = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
                asyncio.run(calls_of(calls // conc, conc))
                after, took = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter() - began
                n = calls // conc * conc
                rows[name].append((n / took, (after.ru_utime - before.ru_utime) / n * 1e6,
                                   (after.ru_stime - before.ru_stime) / n * 1e6))
        for name, values in rows.items():
            rate, user, system = (statistics.median(v[i] for v in values) for i in range(3))
            print(f"| {name} | {conc} | {rate:,.0f} | {user:.0f} | {system:.0f} |")


# ------------------------------------------------------------------------------------------------ endpoints
def document(name: str, model_tar: Path, *, capture: Path | None = None, shadow: bool = False) -> dict[str, Any]:
    def variant(variant_name: str) -> dict[str, Any]:
        return {"VariantName": variant_name, "ModelName": "default", "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}

    config: dict[str, Any] = {"EndpointConfigName": f"{name}-config", "ProductionVariants": [variant("AllTraffic")]}
    if shadow:
        config["ShadowProductionVariants"] = [variant("Shadow")]
    if capture is not None:
        config["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": str(capture),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": [JSON]}}
    return {"EndpointName": name, "EndpointConfig": config,
            "Models": [{"ModelName": "default", "PrimaryContainer": {
                "Image": "smbyoc/serve:cpu", "ModelDataUrl": str(model_tar),
                "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}}}]}


def start_endpoint(doc: dict[str, Any], work: Path, mode: str = "process", client: Any = None,
                   **options: Any) -> HostedEndpoint:
    definition = parse_endpoint_config(doc, source=str(work / f"{doc['EndpointName']}.json"), base_dir=work)
    endpoint = HostedEndpoint(definition, HostingOptions(mode=mode, port=free_port(), seed=1,
                                                         require_nginx=mode == "process", **options),
                              client=client, sink=lambda line: None)
    endpoint.start()
    return endpoint


def front_with(router: Any, name: str, kind: type[Front] = Front, **kwargs: Any) -> Front:
    front = kind(router, port=free_port(), endpoint_name=name, **kwargs)
    front.start()
    return front


def nginx_proxy(work: Path, upstream: str, name: str) -> tuple[str, subprocess.Popen[bytes]]:
    """The reference a front is measured against: nginx (C, one worker, as a local-serve container's) proxying
    ``/endpoints/{name}/invocations`` to ``upstream`` (host:port) over kept-alive connections, adding the
    invoked-variant header; no capture, no shadow, no error reshaping."""
    port, root = free_port(), work / "nginx-proxy"
    (root / "tmp").mkdir(parents=True)
    conf = root / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    upstream model {{ server {upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location = /endpoints/{name}/invocations {{
            proxy_pass http://model/invocations;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            add_header X-Amzn-Invoked-Production-Variant AllTraffic;
        }}
    }}
}}
""")
    process = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(root / "error.log")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            invoke(f"http://127.0.0.1:{port}/endpoints/{name}/invocations")
            return f"http://127.0.0.1:{port}", process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"nginx-proxy: no answer on port {port}: {(root / 'error.log').read_text()[-500:]}")


def invoke(url: str) -> bytes:
    request = urllib.request.Request(url, data=BODY, method="POST", headers={"Content-Type": JSON, "Accept": JSON})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return bytes(answer.read())


def lua(path: Path) -> Path:
    path.write_text(f'wrk.method = "POST"\nwrk.body = [==[{BODY.decode()}]==]\n'
                    f'wrk.headers["Content-Type"] = "{JSON}"\nwrk.headers["Accept"] = "{JSON}"\n')
    return path


# ------------------------------------------------------------------------------------------------ measuring
#: Where a path's CPU per request is read: a thread of this process (the fronts, the capture writer) or a process
#: tree (the nginx proxy's master and workers); None for paths without a front.
CpuSource = Callable[[], tuple[float, float]]


def thread_cpu(native_id: int) -> CpuSource:
    """User and system CPU seconds of thread ``native_id`` of this process."""
    def read() -> tuple[float, float]:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    return read


def tree_cpu(pid: int) -> CpuSource:
    """User and system CPU seconds of process ``pid`` and its descendants."""
    def read() -> tuple[float, float]:
        user = system = 0.0
        for process in process_tree(pid):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
                user, system = user + int(fields[11]) / CLK_TCK, system + int(fields[12]) / CLK_TCK
        return user, system
    return read


def machine_busy() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def front_thread(front: Front) -> CpuSource:
    assert front._thread is not None and front._thread.native_id is not None
    return thread_cpu(front._thread.native_id)


def measure(url: str, script: Path, duration: float, front: CpuSource | None,
            writer: CpuSource | None = None) -> dict[str, Any]:
    run_wrk(url, script, 8, 1)  # uncounted
    none = (0.0, 0.0)
    cpu0, writer0, (busy0, total0) = front() if front else none, writer() if writer else none, machine_busy()
    result = run_wrk(url, script, 8, duration)
    cpu1, writer1, (busy1, total1) = front() if front else none, writer() if writer else none, machine_busy()
    requests = max(result["requests"], 1)
    result["front_user_us"] = (cpu1[0] - cpu0[0]) / requests * 1e6 if front else None
    result["front_sys_us"] = (cpu1[1] - cpu0[1]) / requests * 1e6 if front else None
    result["front_us"] = (sum(cpu1) - sum(cpu0)) / requests * 1e6 if front else None
    result["writer_us"] = (sum(writer1) - sum(writer0)) / requests * 1e6 if writer else None
    result["busy"] = (busy1 - busy0) / max(total1 - total0, 1)
    return result


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and its descendants on ``cpus``."""
    for process in process_tree(pid):
        try:
            for task in Path(f"/proc/{process}/task").iterdir():
                os.sched_setaffinity(int(task.name), cpus)
        except (FileNotFoundError, ProcessLookupError):
            continue


def pin(endpoints: list[HostedEndpoint], proxies: list[int]) -> None:
    """SageMaker's topology on this machine's CPUs: every production instance (nginx, workers) on the last CPU, as
    on a model instance of its own; the platform's side (every thread of this process: the fronts, the capture
    writer, the shadow senders; wrk, started from this process; the shadow variant's instances, which SageMaker
    runs on instances of their own, at their nice value) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    container, rest = {cpus[-1]}, set(cpus[:-1])
    placed = {"production": 0, "shadow": 0}
    for endpoint in endpoints:
        assert endpoint.router is not None
        shadow = endpoint.router.shadow
        shadow_names = {i.name for i in shadow.instances} if shadow is not None else set()
        for instance in endpoint.instances:
            is_shadow = instance.name in shadow_names
            where = rest if is_shadow else container
            if getattr(instance.handle, "container", None) is not None:  # docker mode: the container's cpuset
                instance.handle.container.update(cpuset_cpus=",".join(map(str, sorted(where))))
            else:
                pin_tree(instance.handle.process.pid, where)
            placed["shadow" if is_shadow else "production"] += 1
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), rest)
    for pid in proxies:
        pin_tree(pid, rest)
    print(f"pinned: {placed['production']} production instances on CPU {cpus[-1]}; the fronts, the capture writer, "
          f"{placed['shadow']} shadow instance(s) and wrk on CPU {sorted(rest)}")


def med(rounds: list[dict[str, dict[str, Any]]], path: str, key: str) -> float:
    return float(statistics.median(r[path][key] for r in rounds))


def report(rounds: list[dict[str, dict[str, Any]]], extra: dict[str, Any]) -> str:
    cpus = os.cpu_count() or 1
    lines = ["| path | req/s | p50 ms | p99 ms | front thread µs CPU/request (user + system) | machine busy | "
             "machine µs CPU/request |", "|---|---|---|---|---|---|---|"]
    for path in [p for p in PATHS if p in rounds[0]]:
        def front(key: str, path: str = path) -> str:
            values = [r[path][key] for r in rounds if r[path].get(key) is not None]
            return f"{statistics.median(values):.0f}" if values else "-"

        lines.append(f"| {path} | {med(rounds, path, 'rps'):,.0f} | {med(rounds, path, 'p50'):.2f} | "
                     f"{med(rounds, path, 'p99'):.2f} | {front('front_us')} ({front('front_user_us')} + "
                     f"{front('front_sys_us')}) | {med(rounds, path, 'busy') * 100:.0f} % of {cpus} CPUs | "
                     f"{statistics.median(r[path]['busy'] * cpus / r[path]['rps'] * 1e6 for r in rounds):.0f} |")

    def per_round(fn: Any) -> list[float]:
        return [fn(r) for r in rounds]

    def fmt(values: list[float], unit: str = "") -> str:
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        return (f"**{statistics.median(values):.3f}{unit}** (quartiles {q1:.3f} / {q3:.3f}; rounds: "
                f"{', '.join(f'{v:.3f}' for v in values)})")

    def lost(path: str) -> list[float]:
        return per_round(lambda r: 1 - r[path]["rps"] / r["container"]["rps"])

    def added(path: str) -> list[float]:
        return per_round(lambda r: r[path]["p99"] - r["container"]["p99"])

    def met(values: list[float], limit: float) -> str:
        return "yes" if abs(statistics.median(values)) <= limit else "NO"

    measured = set(rounds[0])
    lines += ["", "| target | measured (median of per-round values) | target | met |", "|---|---|---|---|"]
    if {"container", "front"} <= measured:
        lines += [f"| front: req/s lost vs container | {fmt(lost('front'))} | ≤ 0.15 | {met(lost('front'), 0.15)} |",
                  f"| front: p99 added, ms | {fmt(added('front'))} | ≤ 1 | {met(added('front'), 1)} |"]
    if {"container", "capture"} <= measured:
        lines += [f"| capture 100 %: req/s lost vs container | {fmt(lost('capture'))} | ≤ 0.25 | "
                  f"{met(lost('capture'), 0.25)} |",
                  f"| capture 100 %: p99 added, ms | {fmt(added('capture'))} | - | - |"]
    if {"front", "shadow"} <= measured:
        shadow_p99 = per_round(lambda r: r["shadow"]["p99"] / r["front"]["p99"] - 1)
        shadow_rps = per_round(lambda r: r["shadow"]["rps"] / r["front"]["rps"] - 1)
        lines += [f"| shadow 100 %: production p99 change vs front | {fmt(shadow_p99)} | ≤ 0.10 | "
                  f"{met(shadow_p99, 0.10)} |",
                  f"| shadow 100 %: production req/s change vs front | {fmt(shadow_rps)} | - | - |"]
    for path in [p for p in ("front-published", "front-asyncio", "front-aiohttp", "nginx-proxy", "container-network")
                 if p in measured and "container" in measured]:
        lines += [f"| ({path}) req/s lost vs container | {fmt(lost(path))} | - | - |",
                  f"| ({path}) p99 added, ms | {fmt(added(path))} | - | - |"]
    if {"front", "container-network"} <= measured:
        lines += [f"| (front) req/s lost vs container-network | "
                  f"{fmt(per_round(lambda r: 1 - r['front']['rps'] / r['container-network']['rps']))} | - | - |"]
    writer = [r["capture"]["writer_us"] for r in rounds
              if "capture" in r and r["capture"].get("writer_us") is not None]
    lines += ["", f"shadow copies: {extra['shadow']}; capture: {extra['capture']}; capture writer thread "
              f"{statistics.median(writer) if writer else float('nan'):.0f} µs CPU/request; event loops: "
              f"{extra['loops']}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run")
    parser.add_argument("--paths", nargs="+", choices=PATHS,
                        help="default: every path of the mode (docker mode adds container-network and "
                             "front-published)")
    parser.add_argument("--mode", choices=("process", "docker"), default="process",
                        help="process: each instance a local serve; docker: a smbyoc/serve:cpu container")
    parser.add_argument("--out", type=Path, help="write the raw results (JSON) here")
    parser.add_argument("--pin", action="store_true",
                        help="production containers on the last CPU; fronts, wrk, capture writer and shadow "
                             "containers on the others")
    parser.add_argument("--clients", action="store_true",
                        help="only the clients alone: CPU per call against endpoint B's container, then exit")
    parser.add_argument("--shadow-nice", type=int, default=HostingOptions.shadow_nice,
                        help="nice value of the shadow variant's processes (HostingOptions.shadow_nice; 0: as "
                             "production)")
    args = parser.parse_args()
    docker = args.mode == "docker"
    if args.paths is None:
        args.paths = [p for p in PATHS if docker or p not in DOCKER_PATHS]
    elif not docker and set(args.paths) & set(DOCKER_PATHS):
        sys.exit(f"{', '.join(sorted(set(args.paths) & set(DOCKER_PATHS)))}: only with --mode docker")
    if docker and args.clients:
        sys.exit("--clients: only with --mode process")
    for tool in ("wrk", *(() if docker and "nginx-proxy" not in args.paths else ("nginx",))):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (scripts/setup-bench-tools; PATH=/usr/sbin:$PATH for nginx)")
    from smbyoc.emulator.default_model import default_model

    model_tar = default_model("process")
    work = Path(tempfile.mkdtemp(prefix="front-bench-"))
    endpoints: list[HostedEndpoint] = []
    fronts: list[Front] = []
    proxies: list[subprocess.Popen[bytes]] = []
    print(f"start {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}, model {model_tar}", flush=True)
    client = None
    if docker:
        from smbyoc.docker.client import get_client

        client = get_client()
    try:
        b = start_endpoint(document("bench-b", model_tar), work, args.mode, client)
        endpoints.append(b)
        c = start_endpoint(document("bench-c", model_tar, capture=work / "capture"), work, args.mode, client)
        endpoints.append(c)
        d = start_endpoint(document("bench-d", model_tar, shadow=True), work, args.mode, client,
                           shadow_nice=args.shadow_nice)
        endpoints.append(d)
        container_url = b.instances[0].handle.url  # (docker: the published port)
        router = b.instances[0].router
        assert isinstance(router, ContainerRouter)
        network_url = router.url.removesuffix("/invocations")  # the route B's front takes
        if docker and network_url == container_url:
            sys.exit("the front reaches the container through its published port: no network route here")
        expected = invoke(container_url + "/invocations")
        if args.clients:
            clients(container_url + "/invocations", reps=args.reps)
            return 0

        def one_instance(name: str, url: str = network_url) -> EndpointRouter:
            return EndpointRouter([Variant("AllTraffic", [Instance(name, ContainerRouter(url),
                                                                   b.instances[0].handle)])])

        fronts.append(front_with(one_instance("asyncio-1"), "bench-b", event_loop="asyncio"))
        fronts.append(front_with(one_instance("aiohttp-1"), "bench-b", AiohttpFront, event_loop="asyncio"))
        fronts.append(front_with(NullRouter(expected), "bench-b"))
        fronts.append(front_with(one_instance("published-1", container_url), "bench-b"))
        proxy_url, proxy_cpu = "", None
        if "nginx-proxy" in args.paths:
            proxy_url, proxy = nginx_proxy(work, network_url.split("//", 1)[1], "bench-b")
            proxies.append(proxy)
            proxy_cpu = tree_cpu(proxy.pid)
        assert b.front is not None and c.front is not None and d.front is not None
        targets: dict[str, tuple[str, CpuSource | None]] = {
            "container": (container_url + "/invocations", None),
            "container-network": (network_url + "/invocations", None),
            "front-published": (f"{fronts[3].url}/endpoints/bench-b/invocations", front_thread(fronts[3])),
            "front": (f"{b.url}/endpoints/bench-b/invocations", front_thread(b.front)),
            "front-asyncio": (f"{fronts[0].url}/endpoints/bench-b/invocations", front_thread(fronts[0])),
            "front-aiohttp": (f"{fronts[1].url}/endpoints/bench-b/invocations", front_thread(fronts[1])),
            "front-null": (f"{fronts[2].url}/endpoints/bench-b/invocations", front_thread(fronts[2])),
            "nginx-proxy": (f"{proxy_url}/endpoints/bench-b/invocations", proxy_cpu),
            "capture": (f"{c.url}/endpoints/bench-c/invocations", front_thread(c.front)),
            "shadow": (f"{d.url}/endpoints/bench-d/invocations", front_thread(d.front)),
        }
        loops = {"front": b.front.loop_name, "front-asyncio": fronts[0].loop_name,
                 "front-aiohttp": fronts[1].loop_name}
        for path, (url, _) in targets.items():
            if path not in args.paths:
                continue
            answer = invoke(url)
            if json.loads(answer) != json.loads(expected):
                raise RuntimeError(f"{path} answered {answer[:300]!r}, expected {expected[:300]!r}")
        script = lua(work / "post.lua")
        if args.pin:
            pin(endpoints, [proxy.pid for proxy in proxies])
        rounds: list[dict[str, dict[str, Any]]] = []
        paths = [p for p in PATHS if p in args.paths]
        assert d.router is not None and c.capture is not None
        shadow_before = dict(vars(d.router.shadow_stats))
        for rep in range(args.reps):
            order = paths[rep % len(paths):] + paths[:rep % len(paths)]
            results: dict[str, dict[str, Any]] = {}
            for path in order:
                url, front_cpu = targets[path]
                thread = c.capture._thread if path == "capture" else None
                writer = thread_cpu(thread.native_id) if thread is not None and thread.native_id else None
                results[path] = r = measure(url, script, args.duration, front_cpu, writer)
                print(f"round {rep + 1} {path:14s} {r['rps']:8,.0f} req/s  p50 {r['p50']:6.2f} ms  "
                      f"p99 {r['p99']:6.2f} ms  front {r['front_us'] or 0:5.0f} µs/req "
                      f"({r['front_user_us'] or 0:.0f} + {r['front_sys_us'] or 0:.0f})  "
                      f"writer {r['writer_us'] or 0:3.0f} µs/req  busy "
                      f"{r['busy'] * 100:3.0f} %  non-2xx {r['non2xx']} errors {r['errors']}", flush=True)
                if r["non2xx"] or r["errors"]:
                    print(f"   WARNING: {path}: {r['non2xx']} non-2xx answers, {r['errors']} socket errors")
            rounds.append(results)
        c.capture.flush()
        shadow = {k: v - shadow_before[k] for k, v in vars(d.router.shadow_stats).items()}
        extra = {"shadow": shadow, "capture": {k: v for k, v in c.capture.stats.to_dict().items() if v},
                 "loops": loops, "shadow_nice": args.shadow_nice}
        print(f"\nend {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} UTC, load average "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n")
        print(report(rounds, extra))
        if args.out:
            args.out.write_text(json.dumps({"rounds": rounds, "extra": extra}, indent=1))
    finally:
        for proxy in proxies:
            proxy.terminate()
            proxy.wait(10)
        for front in fronts:
            front.stop()
        for endpoint in endpoints:
            endpoint.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
