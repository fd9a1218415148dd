"""How `serve`'s worker path was chosen: the same server, model and load with each way nginx reaches gunicorn.

Paths (each the real `serve` behind nginx with 2 workers):
  upstream  SMBYOC_GUNICORN_WORKER_CLASS=upstream: smbyoc's own HTTP/1.x worker (proxy_pass)
  uwsgi     SMBYOC_SERVE_PROTOCOL=uwsgi: gunicorn's own `--protocol uwsgi`, sync worker, unpatched (uwsgi_pass)
  sync      SMBYOC_GUNICORN_WORKER_CLASS=sync: gunicorn's sync worker over HTTP (proxy_pass)
  gthread   SMBYOC_GUNICORN_WORKER_CLASS=gthread (on request: --paths ... gthread)
`wrk --latency` POSTs one JSON row at each concurrency, --reps rounds with the paths interleaved inside each
round (the order rotates from round to round); a thread GETs /ping every 50 ms meanwhile. Cells are medians
over rounds; /ping columns pool the samples; ratios are against the first path. Then, per path, /ping while
both workers are busy with 1-second predictions (a user handler that sleeps).

    scripts/setup-bench-tools    # wrk (and nginx)
    .venv/bin/python bench/worker_classes.py [--model default --duration 5 --reps 5 --concurrency 1 8 32]
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
    default_model_onnx,
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

#: The environment that selects each path.
PATHS = {
    "upstream": {"SMBYOC_GUNICORN_WORKER_CLASS": "upstream"},
    "uwsgi": {"SMBYOC_SERVE_PROTOCOL": "uwsgi", "SMBYOC_GUNICORN_WORKER_CLASS": "sync"},
    "sync": {"SMBYOC_GUNICORN_WORKER_CLASS": "sync"},
    "gthread": {"SMBYOC_GUNICORN_WORKER_CLASS": "gthread"},
}
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
    return start_smbyoc(model_file, work, PATHS[kind], code)


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
    parser.add_argument("--paths", nargs="+", default=["upstream", "uwsgi", "sync"], choices=list(PATHS))
    parser.add_argument("--model", default="default", choices=list(MODELS))
    parser.add_argument("--default-model-tar", type=Path, help="a local-train model.tar.gz of the default example")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-busy-ping", dest="busy_ping", action="store_false")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        sys.exit("wrk and nginx are needed on PATH (scripts/setup-bench-tools)")
    kinds: list[str] = args.paths
    model = MODELS[args.model]
    compile_smbyoc()
    began = time.monotonic()
    before = load_avg()
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    pings: dict[tuple[str, int], list[float]] = {}
    busy: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="smbyoc-worker-bench-") as tmp:
        work = Path(tmp)
        if args.model == "default":
            default_model_onnx(work / "model.onnx", args.default_model_tar, work)
        else:
            make_matmul_model(work / "model.onnx")
        script = work / "post.lua"
        lua_script(script, model.json_body, "application/json")
        servers = {kind: start(kind, work / "model.onnx", work / kind) for kind in kinds}
        try:
            answers = set()
            for server in servers.values():
                time_startup(server, time.monotonic(), model.json_body, "application/json")
                answers.add(request(server.port, "POST", "/invocations", model.json_body,
                                    {"Content-Type": "application/json", "Accept": "application/json"}))
                run_wrk(server.port, script, 8, 1)  # warm-up
            assert len(answers) == 1, f"the paths answer differently: {answers}"
            for rep in range(args.reps):
                print(f"-- round {rep + 1}/{args.reps}  load {load_avg()}", flush=True)
                for conc in args.concurrency:
                    order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]  # rotate: no path always first
                    for kind in order:
                        with pinger(servers[kind].port) as samples:
                            r = run_wrk(servers[kind].port, script, conc, args.duration)
                        runs.setdefault((kind, conc), []).append(r)
                        pings.setdefault((kind, conc), []).extend(samples)
                        print(f"   {kind:8s} c={conc:<3d} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                              f"p99 {r['p99']:6.2f} ms  non-2xx {r['non2xx']}  errors {r['socket_errors']}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        if args.busy_ping:
            for kind in kinds:
                busy[kind] = busy_ping(kind, work)
                print(f"   {kind:8s} /ping with every worker busy: p50 {pct(busy[kind], 50):.1f} ms  "
                      f"max {max(busy[kind]):.1f} ms", flush=True)
    base = kinds[0]
    print(f"\nmodel {args.model}, {WORKERS} workers, wrk {args.reps} x {args.duration} s per cell, medians; "
          f"ratios against `{base}`")
    print("\n| path | conc. | req/s | p50 ms | p99 ms | req/s ratio | p99 ratio | /ping under load p99 / max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for conc in args.concurrency:
        ref = runs[(base, conc)]
        ref_rps = statistics.median(r["rps"] for r in ref)
        ref_p99 = statistics.median(r["p99"] for r in ref)
        for kind in kinds:
            rs, ping = runs[(kind, conc)], pings[(kind, conc)]
            rps = statistics.median(r["rps"] for r in rs)
            p99 = statistics.median(r["p99"] for r in rs)
            print(f"| `{kind}` | {conc} | {rps:,.0f} | {statistics.median(r['p50'] for r in rs):.2f} | {p99:.2f} "
                  f"| {rps / ref_rps:.2f} | {p99 / ref_p99:.2f} | {pct(ping, 99):.1f} / {max(ping):.1f} |")
    print("\nper round (req/s, p99 ms):")
    for (kind, conc), rs in runs.items():
        print(f"   {kind:8s} c={conc:<3d} " + ", ".join(f"{r['rps']:.0f}/{r['p99']:.2f}" for r in rs))
    if busy:
        print("\n| path | /ping while every worker is in a 1-s prediction: p50 / p99 / max ms |")
        print("|---|---|")
        for kind in kinds:
            print(f"| `{kind}` | {pct(busy[kind], 50):.1f} / {pct(busy[kind], 99):.1f} / {max(busy[kind]):.1f} |")
    print(f"\nload average before {before}, after {load_avg()}; {time.monotonic() - began:.0f} s in all")
    return 0

if __name__ == "__main__":
    sys.exit(main())
