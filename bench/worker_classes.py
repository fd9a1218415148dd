"""How `serve`'s gunicorn worker class was chosen: the same server, model and load with each worker class.

For each class (SMBYOC_GUNICORN_WORKER_CLASS = upstream | sync | gthread) `serve` runs behind nginx with 2
workers and the 4x3 MatMul ONNX model; `wrk --latency` POSTs one JSON row at each concurrency, --reps rounds
with the classes interleaved inside each round; a thread GETs /ping every 50 ms meanwhile. Cells are medians
over rounds; /ping columns pool the samples. Then, per class, /ping while both workers are busy with
1-second predictions (a user handler that sleeps), the case the readiness file exists for.

    .venv/bin/python bench/worker_classes.py [--duration 5 --reps 3 --concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import (
    MODELS,
    WORKERS,
    Server,
    compile_smbyoc,
    load_avg,
    lua_script,
    make_matmul_model,
    pct,
    pinger,
    request,
    run_wrk,
    start_smbyoc,
    time_startup,
)

CLASSES = ("upstream", "sync", "gthread")
SLOW_HANDLER = """
import time
def model_fn(model_dir):
    return "slow"
def transform_fn(model, body, content_type, accept):
    time.sleep(1.0)
    return b"[1]", "application/json"
"""


def start(kind: str, model_file: Path, work: Path, code: str | None = None) -> Server:
    work.mkdir(parents=True)
    return start_smbyoc(model_file, work, {"SMBYOC_GUNICORN_WORKER_CLASS": kind}, code)


def busy_ping(kind: str, work: Path) -> list[float]:
    """/ping latencies (ms) while every worker sleeps in a 1-s prediction."""
    server = start(kind, work / "model.onnx", work / f"slow-{kind}", textwrap.dedent(SLOW_HANDLER))
    try:
        time_startup(server, time.monotonic(), b"[1]", "application/json")
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                request(server.port, "POST", "/invocations", b"[1]", {"Content-Type": "application/json"}, timeout=10)

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(WORKERS * 2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with pinger(server.port) as samples:
            time.sleep(4)
        stop.set()
        return samples
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        sys.exit("wrk and nginx are needed on PATH")
    compile_smbyoc()
    before = load_avg()
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    pings: dict[tuple[str, int], list[float]] = {}
    busy: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="smbyoc-worker-bench-") as tmp:
        work = Path(tmp)
        make_matmul_model(work / "model.onnx")
        script = work / "post.lua"
        lua_script(script, MODELS["matmul4x3"].json_body, "application/json")
        servers = {kind: start(kind, work / "model.onnx", work / kind) for kind in CLASSES}
        try:
            for server in servers.values():
                time_startup(server, time.monotonic(), MODELS["matmul4x3"].json_body, "application/json")
                run_wrk(server.port, script, 8, 1)  # warm-up
            for rep in range(args.reps):
                print(f"-- round {rep + 1}/{args.reps}  load {load_avg()}", flush=True)
                for conc in args.concurrency:
                    for kind, server in servers.items():
                        with pinger(server.port) as samples:
                            r = run_wrk(server.port, script, conc, args.duration)
                        runs.setdefault((kind, conc), []).append(r)
                        pings.setdefault((kind, conc), []).extend(samples)
                        print(f"   {kind:8s} c={conc:<3d} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                              f"p99 {r['p99']:6.2f} ms  non-2xx {r['non2xx']}  errors {r['socket_errors']}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        for kind in CLASSES:
            busy[kind] = busy_ping(kind, work)
            print(f"   {kind:8s} /ping with every worker busy: p50 {pct(busy[kind], 50):.1f} ms  "
                  f"max {max(busy[kind]):.1f} ms", flush=True)
    print("\n| worker class | conc. | req/s | p50 ms | p99 ms | /ping under load p99 / max ms |")
    print("|---|---|---|---|---|---|")
    for conc in args.concurrency:
        for kind in CLASSES:
            rs, ping = runs[(kind, conc)], pings[(kind, conc)]
            print(f"| `{kind}` | {conc} | {statistics.median(r['rps'] for r in rs):,.0f} "
                  f"| {statistics.median(r['p50'] for r in rs):.2f} | {statistics.median(r['p99'] for r in rs):.2f} "
                  f"| {pct(ping, 99):.1f} / {max(ping):.1f} |")
    print("\n| worker class | /ping while every worker is in a 1-s prediction: p50 / p99 / max ms |")
    print("|---|---|")
    for kind in CLASSES:
        print(f"| `{kind}` | {pct(busy[kind], 50):.1f} / {pct(busy[kind], 99):.1f} / {max(busy[kind]):.1f} |")
    print(f"\nload average before {before}, after {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
