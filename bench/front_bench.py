"""What the endpoint front costs (issue 12): an endpoint config's one container called directly vs through the
front, with data capture, and with a shadow variant.

Everything runs as local processes on 127.0.0.1 (process mode: each instance is `serve`, i.e. nginx + gunicorn
with 2 workers; no Docker). The model is the bundled default example's model.tar.gz (trained once and cached by
smbyoc: its code/inference.py and model.onnx), the body one row as JSON (`{"instances": [[8 floats]]}`),
Content-Type and Accept application/json.

Paths (the endpoints are started once and kept for all rounds):

* container: POST /invocations on endpoint B's one container, directly;
* front: endpoint B (HostedEndpoint from an endpoint config, one variant), POST /endpoints/B/invocations;
* front-aiohttp: the same container behind a second front built the same way (EndpointRouter, one Variant,
  one instance) whose instance router is the client before this change: aiohttp's ClientSession
  (`AiohttpContainerRouter` below, bench only);
* front-null: a front whose router answers from memory (the front's own ceiling, no upstream call);
* front-uvloop (with --uvloop, uvloop importable, e.g. PYTHONPATH=<dir with uvloop>): built as front-aiohttp
  but with the upstream pool, its event loop uvloop's instead of asyncio's (what a faster loop would give);
* capture: endpoint C, like B with DataCaptureConfig at 100 % (Input and Output, JSON captured as text);
* shadow: endpoint D, one production and one shadow variant, shadow weight = production weight (every call
  copied); the latencies wrk sees are production's.

Load: `wrk -t2 -c8 -d{--duration}s --latency` with a Lua script that sets the method, body and headers, after
1 s of uncounted load on the same path. --reps rounds, the paths interleaved inside each round (order rotated).
Cells are medians over rounds; per-round ratios are printed too. Beside wrk's numbers: CPU seconds per request of
the front's thread (/proc/self/task/<tid>/stat) and how busy the machine was (/proc/stat).

No CPU pinning: the front (a thread of this process), the capture writer thread, nginx, the gunicorn workers
and wrk share the machine's CPUs as they would in `smbyoc local-serve`. With --pin instead (what the front costs
when it does not compete with the container for CPUs, as on SageMaker, where the platform's front runs elsewhere):
only the container, front and front-aiohttp paths, endpoint B's container (nginx, workers) pinned to the last
CPU, the fronts' threads and wrk to the others. --shadow-nice N (what-if): the shadow variant's processes at nice N.
--clients: no wrk; each client alone (the upstream pool, aiohttp's, a bare Protocol that only counts bytes) making
sequential calls to B's container from 1 and 8 tasks in this thread, CPU per call from getrusage(RUSAGE_THREAD).

    scripts/setup-bench-tools       # wrk
    PATH=/usr/sbin:$PATH .venv/bin/python bench/front_bench.py [--reps 5 --duration 5] [--uvloop] [--pin]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mme_bench import run_wrk  # wrk with --latency, parsed

from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.front import Call, Front, Reply, returned_headers
from smbyoc.emulator.hosted_endpoint import ContainerRouter, HostedEndpoint, HostingOptions
from smbyoc.emulator.variants import EndpointRouter, Instance, Variant
from smbyoc.serving.ports import free_port

JSON = "application/json"
BODY = b'{"instances": [[21.5, 0.8, 1012.0, 3.2, 45.0, 0.1, 12.0, 0.5]]}'
PATHS = ("container", "front", "front-aiohttp", "front-null", "capture", "shadow")
#: With --uvloop (uvloop importable): the same front as front-aiohttp but with the upstream pool, on uvloop's loop.
UVLOOP_PATH = "front-uvloop"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ routers
class AiohttpContainerRouter(ContainerRouter):
    """The one-container router as it was before the upstream pool: aiohttp's ClientSession (the front's old
    settings: unlimited pooled connector, no decompression, no User-Agent). Bench only, for the comparison."""

    async def open(self, session: Any) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
        self._aio = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                          skip_auto_headers=("User-Agent", "Content-Type"))

    async def invoke(self, call: Call) -> Reply:
        import aiohttp

        async with self._aio.post(self.url, data=call.body, headers=dict(call.headers),
                                  timeout=aiohttp.ClientTimeout(total=self.timeout)) as answer:
            data = await answer.read()
            return Reply(answer.status, data, returned_headers(answer.headers))

    async def close(self) -> None:
        await self._aio.close()


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
class _CountingProtocol:
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
    import asyncio
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
                                                               parts.hostname, parts.port)
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


def start_endpoint(doc: dict[str, Any], work: Path) -> HostedEndpoint:
    definition = parse_endpoint_config(doc, source=str(work / f"{doc['EndpointName']}.json"), base_dir=work)
    endpoint = HostedEndpoint(definition, HostingOptions(mode="process", port=free_port(), seed=1,
                                                         require_nginx=True), sink=lambda line: None)
    endpoint.start()
    return endpoint


def front_with(router: Any, name: str) -> Front:
    front = Front(router, port=free_port(), endpoint_name=name)
    front.start()
    return front


def invoke(url: str) -> bytes:
    request = urllib.request.Request(url, data=BODY, method="POST", headers={"Content-Type": JSON, "Accept": JSON})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return bytes(answer.read())


def lua(path: Path) -> Path:
    path.write_text(f'wrk.method = "POST"\nwrk.body = [==[{BODY.decode()}]==]\n'
                    f'wrk.headers["Content-Type"] = "{JSON}"\nwrk.headers["Accept"] = "{JSON}"\n')
    return path


# ------------------------------------------------------------------------------------------------ measuring
def thread_cpu(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def front_thread(front: Front) -> int:
    assert front._thread is not None and front._thread.native_id is not None
    return front._thread.native_id


def measure(url: str, script: Path, duration: float, thread_id: int, writer_id: int = 0) -> dict[str, Any]:
    run_wrk(url, script, 8, 1)  # uncounted
    cpu0, writer0, (busy0, total0) = (thread_cpu(thread_id) if thread_id else 0.0,
                                      thread_cpu(writer_id) if writer_id else 0.0, machine_busy())
    result = run_wrk(url, script, 8, duration)
    cpu1, writer1, (busy1, total1) = (thread_cpu(thread_id) if thread_id else 0.0,
                                      thread_cpu(writer_id) if writer_id else 0.0, machine_busy())
    requests = max(result["requests"], 1)
    result["front_us"] = (cpu1 - cpu0) / requests * 1e6 if thread_id else None
    result["writer_us"] = (writer1 - writer0) / requests * 1e6 if writer_id else None
    result["busy"] = (busy1 - busy0) / max(total1 - total0, 1)
    return result


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def pin(endpoint: HostedEndpoint, front_tids: list[int]) -> None:
    """Endpoint's container tree (every thread) on the last CPU; the fronts' threads and this process's main thread
    (so wrk, its child) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    container, rest = {cpus[-1]}, set(cpus[:-1])
    for pid in tree(endpoint.instances[0].handle.process.pid):
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), container)
    for tid in front_tids:
        os.sched_setaffinity(tid, rest)
    os.sched_setaffinity(0, rest)
    print(f"pinned: container tree on CPU {cpus[-1]}, front thread and wrk on CPU {sorted(rest)}")


def med(rounds: list[dict[str, dict[str, Any]]], path: str, key: str) -> float:
    return statistics.median(r[path][key] for r in rounds)


def report(rounds: list[dict[str, dict[str, Any]]], extra: dict[str, Any]) -> str:
    cpus = os.cpu_count() or 1
    lines = ["| path | req/s | p50 ms | p99 ms | front thread µs CPU/request | machine busy | machine µs CPU/request |",
             "|---|---|---|---|---|---|---|"]
    for path in [p for p in (*PATHS, UVLOOP_PATH) if p in rounds[0]]:
        front_us = [r[path]["front_us"] for r in rounds if r[path]["front_us"] is not None]
        lines.append(f"| {path} | {med(rounds, path, 'rps'):,.0f} | {med(rounds, path, 'p50'):.2f} | "
                     f"{med(rounds, path, 'p99'):.2f} | "
                     f"{f'{statistics.median(front_us):.0f}' if front_us else '-'} | "
                     f"{med(rounds, path, 'busy') * 100:.0f} % of {cpus} CPUs | "
                     f"{statistics.median(r[path]['busy'] * cpus / r[path]['rps'] * 1e6 for r in rounds):.0f} |")

    def per_round(fn: Any) -> list[float]:
        return [fn(r) for r in rounds]

    def fmt(values: list[float], unit: str = "") -> str:
        return f"**{statistics.median(values):.3f}{unit}** (rounds: {', '.join(f'{v:.3f}' for v in values)})"

    rps_front = per_round(lambda r: 1 - r["front"]["rps"] / r["container"]["rps"])
    p99_front = per_round(lambda r: r["front"]["p99"] - r["container"]["p99"])
    rps_aio = per_round(lambda r: 1 - r["front-aiohttp"]["rps"] / r["container"]["rps"])
    p99_aio = per_round(lambda r: r["front-aiohttp"]["p99"] - r["container"]["p99"])
    rps_capture = per_round(lambda r: 1 - r["capture"]["rps"] / r["container"]["rps"])
    p99_capture = per_round(lambda r: r["capture"]["p99"] - r["container"]["p99"])
    shadow_p99 = per_round(lambda r: r["shadow"]["p99"] / r["front"]["p99"] - 1)
    lines += ["", "| target | measured (median of per-round values) | target | met |", "|---|---|---|---|",
              f"| front: req/s lost vs container | {fmt(rps_front)} | ≤ 0.15 | "
              f"{'yes' if statistics.median(rps_front) <= 0.15 else 'NO'} |",
              f"| front: p99 added, ms | {fmt(p99_front)} | ≤ 1 | "
              f"{'yes' if statistics.median(p99_front) <= 1 else 'NO'} |",
              f"| capture 100 %: req/s lost vs container | {fmt(rps_capture)} | ≤ 0.25 | "
              f"{'yes' if statistics.median(rps_capture) <= 0.25 else 'NO'} |",
              f"| capture 100 %: p99 added, ms | {fmt(p99_capture)} | - | - |",
              f"| shadow 100 %: production p99 change vs front | {fmt(shadow_p99)} | ≤ 0.10 | "
              f"{'yes' if abs(statistics.median(shadow_p99)) <= 0.10 else 'NO'} |",
              f"| (aiohttp client) front: req/s lost vs container | {fmt(rps_aio)} | - | - |",
              f"| (aiohttp client) front: p99 added, ms | {fmt(p99_aio)} | - | - |"]
    if UVLOOP_PATH in rounds[0]:
        lines += [f"| (uvloop) front: req/s lost vs container | "
                  f"{fmt(per_round(lambda r: 1 - r[UVLOOP_PATH]['rps'] / r['container']['rps']))} | - | - |",
                  f"| (uvloop) front: p99 added, ms | "
                  f"{fmt(per_round(lambda r: r[UVLOOP_PATH]['p99'] - r['container']['p99']))} | - | - |"]
    writer = [r["capture"]["writer_us"] for r in rounds if r["capture"].get("writer_us") is not None]
    lines += ["", f"shadow copies: {extra['shadow']}; capture: {extra['capture']}; capture writer thread "
              f"{statistics.median(writer) if writer else float('nan'):.0f} µs CPU/request"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--out", type=Path, help="write the raw results (JSON) here")
    parser.add_argument("--uvloop", action="store_true", help="add the front-uvloop path (needs uvloop)")
    parser.add_argument("--pin", action="store_true", help="container on the last CPU, front and wrk on the others")
    parser.add_argument("--clients", action="store_true",
                        help="only the clients alone: CPU per call against endpoint B's container, then exit")
    parser.add_argument("--shadow-nice", type=int, default=0,
                        help="what-if: run the shadow variant's processes at this nice value (default 0: as is)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (scripts/setup-bench-tools; PATH=/usr/sbin:$PATH for nginx)")
    from smbyoc.emulator.default_model import default_model

    model_tar = default_model("process")
    work = Path(tempfile.mkdtemp(prefix="front-bench-"))
    endpoints: list[HostedEndpoint] = []
    fronts: list[Front] = []
    print(f"start {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}, model {model_tar}", flush=True)
    try:
        b = start_endpoint(document("bench-b", model_tar), work)
        endpoints.append(b)
        c = start_endpoint(document("bench-c", model_tar, capture=work / "capture"), work)
        endpoints.append(c)
        d = start_endpoint(document("bench-d", model_tar, shadow=True), work)
        endpoints.append(d)
        if args.shadow_nice:
            for instance in d.instances:
                if instance.name.startswith("Shadow"):
                    for pid in tree(instance.handle.process.pid):
                        for task in Path(f"/proc/{pid}/task").iterdir():  # (nice is per thread on Linux)
                            os.setpriority(os.PRIO_PROCESS, int(task.name), args.shadow_nice)
            print(f"what-if: the shadow variant's processes run at nice {args.shadow_nice}")
        container_url = b.instances[0].handle.url
        expected = invoke(container_url + "/invocations")
        if args.clients:
            clients(container_url + "/invocations", reps=args.reps)
            return 0
        aio_router = EndpointRouter([Variant("AllTraffic", [Instance("aiohttp-1", AiohttpContainerRouter(
            container_url), b.instances[0].handle)])])
        fronts.append(front_with(aio_router, "bench-b"))
        fronts.append(front_with(NullRouter(expected), "bench-b"))
        if args.uvloop:
            import asyncio

            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # read when the front's thread makes its loop
            try:
                fronts.append(front_with(EndpointRouter([Variant("AllTraffic", [Instance(
                    "uvloop-1", ContainerRouter(container_url), b.instances[0].handle)])]), "bench-b"))
            finally:
                asyncio.set_event_loop_policy(None)
        targets: dict[str, tuple[str, int]] = {
            "container": (container_url + "/invocations", 0),
            "front": (f"{b.url}/endpoints/bench-b/invocations", front_thread(b.front)),  # type: ignore[arg-type]
            "front-aiohttp": (f"{fronts[0].url}/endpoints/bench-b/invocations", front_thread(fronts[0])),
            "front-null": (f"{fronts[1].url}/endpoints/bench-b/invocations", front_thread(fronts[1])),
            "capture": (f"{c.url}/endpoints/bench-c/invocations", front_thread(c.front)),  # type: ignore[arg-type]
            "shadow": (f"{d.url}/endpoints/bench-d/invocations", front_thread(d.front)),  # type: ignore[arg-type]
        }
        if args.uvloop:
            targets[UVLOOP_PATH] = (f"{fronts[2].url}/endpoints/bench-b/invocations", front_thread(fronts[2]))
        for path, (url, _) in targets.items():
            answer = invoke(url)
            if json.loads(answer) != json.loads(expected):
                raise RuntimeError(f"{path} answered {answer[:300]!r}, expected {expected[:300]!r}")
        script = lua(work / "post.lua")
        if args.pin:
            pin(b, [front_thread(b.front), front_thread(fronts[0])])  # type: ignore[arg-type]
            args.paths = ["container", "front", "front-aiohttp"]
        rounds: list[dict[str, dict[str, Any]]] = []
        paths = [p for p in PATHS if p in args.paths] + ([UVLOOP_PATH] if args.uvloop else [])
        assert d.router is not None and c.capture is not None
        shadow_before = dict(vars(d.router.shadow_stats))
        for rep in range(args.reps):
            order = paths[rep % len(paths):] + paths[:rep % len(paths)]
            results: dict[str, dict[str, Any]] = {}
            for path in order:
                url, thread_id = targets[path]
                writer = c.capture._thread.native_id if path == "capture" and c.capture._thread else 0
                results[path] = r = measure(url, script, args.duration, thread_id, writer or 0)
                print(f"round {rep + 1} {path:14s} {r['rps']:8,.0f} req/s  p50 {r['p50']:6.2f} ms  "
                      f"p99 {r['p99']:6.2f} ms  front {r['front_us'] or 0:5.0f} µs/req  "
                      f"writer {r['writer_us'] or 0:3.0f} µs/req  busy "
                      f"{r['busy'] * 100:3.0f} %  non-2xx {r['non2xx']} errors {r['errors']}", flush=True)
                if r["non2xx"] or r["errors"]:
                    print(f"   WARNING: {path}: {r['non2xx']} non-2xx answers, {r['errors']} socket errors")
            rounds.append(results)
        c.capture.flush()
        shadow = {k: v - shadow_before[k] for k, v in vars(d.router.shadow_stats).items()}
        extra = {"shadow": shadow, "capture": {k: v for k, v in vars(c.capture.stats).items() if v}}
        print(f"\nend {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S} UTC, load average "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n")
        if set(PATHS) <= set(paths):
            print(report(rounds, extra))
        else:
            for path in paths:
                print(f"{path}: {med(rounds, path, 'rps'):,.0f} req/s, p50 {med(rounds, path, 'p50'):.2f} ms, "
                      f"p99 {med(rounds, path, 'p99'):.2f} ms, busy {med(rounds, path, 'busy') * 100:.0f} %")
            for path in [p for p in paths if p.startswith("front-") or p == "front"]:
                if "container" in paths:
                    lost = [1 - r[path]["rps"] / r["container"]["rps"] for r in rounds]
                    added = [r[path]["p99"] - r["container"]["p99"] for r in rounds]
                    print(f"{path}: req/s lost {statistics.median(lost):.3f} ({', '.join(f'{v:.3f}' for v in lost)});"
                          f" p99 added {statistics.median(added):.2f} ms ({', '.join(f'{v:.2f}' for v in added)})")
        if args.out:
            args.out.write_text(json.dumps({"rounds": rounds, "extra": extra}, indent=1))
    finally:
        for front in fronts:
            front.stop()
        for endpoint in endpoints:
            endpoint.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
