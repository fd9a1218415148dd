"""Emulator benchmark: `smbyoc local-train` / `local-serve` vs bare `docker run` vs SageMaker Python SDK v2 local mode.

Training (no-op image bench/noop_image: `train` writes one file to /opt/ml/model), --reps interleaved rounds:
  bare        `docker run --rm IMAGE train`                                     (the floor)
  local-train `smbyoc local-train --image IMAGE -o DIR --job-name ...`         (CLI start to exit)
  SDK v2      `Estimator(..., instance_type="local").fit({"train": "file://..."})` via docker-compose
Serving (smbyoc/serve:cpu with the default example's model.tar.gz), --reps interleaved rounds:
  bare        `docker run -d -p 127.0.0.1:P:8080 -v MODEL:/opt/ml/model:ro IMAGE serve` to the first 200 on /ping
  local-serve `smbyoc local-serve --port P --ready-file F` from process start to F existing (written after
              the first 200 on /ping), plus the seconds it prints itself
  SDK v2      `Model(image_uri=..., model_data="file://.../model.tar.gz").deploy(instance_type="local")` to
              deploy() returning, and to the first predict() answer
Then image sizes (`docker image inspect`). All ports are published on 127.0.0.1; every container the run
creates is removed, and the `sagemaker-local` network when this run created it.

    .venv/bin/python bench/emulator_bench.py --sdk-python /tmp/bench-venv/bin/python [--reps 5]
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
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOOP_TAG = "smbyoc-bench/noop-train:latest"
SERVE_IMAGE = "smbyoc/serve:cpu"
SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
BODY = '{"instances": [[21.5, 0.8, 1012.0, 3.2, 45.0, 0.1, 12.0, 0.5]]}'
SDK_ENV = {
    "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIABENCHFAKE",
    "AWS_SECRET_ACCESS_KEY": "fake",
}


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def free_port() -> int:
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port


def ping(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def remove_compose_containers(root: Path) -> None:
    """Containers docker-compose created for SDK jobs under `root` (the SDK leaves them behind)."""
    ids = docker("ps", "-aq", "--filter", "label=com.docker.compose.version").split()
    for cid in ids:
        wd = docker(
            "inspect", "-f", '{{index .Config.Labels "com.docker.compose.project.working_dir"}}', cid, check=False
        ).strip()
        if wd.startswith(str(root)):
            docker("rm", "-f", cid, check=False)


# -------------------------------------------------------------------------------------------- training
def bare_train(work: Path) -> dict[str, float]:
    began = time.monotonic()
    subprocess.run(["docker", "run", "--rm", NOOP_TAG, "train"], check=True, capture_output=True)
    return {"wall": time.monotonic() - began}


def smbyoc_train(work: Path, i: int) -> dict[str, float]:
    began = time.monotonic()
    out = subprocess.run(
        [*SMBYOC, "local-train", "--image", NOOP_TAG, "-o", str(work / "out"), "--job-name", f"bench-noop-{i}"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - began
    assert (work / "out" / f"bench-noop-{i}" / "output" / "model.tar.gz").is_file(), out.stderr[-2000:]
    m = re.search(r"Completed in ([\d.]+) s", out.stdout + out.stderr)
    return {"wall": wall, "reported": float(m.group(1)) if m else float("nan")}


def sdk_run(sdk_python: str, args: list[str], work: Path, timeout: float) -> dict[str, Any]:
    began = time.monotonic()
    proc = subprocess.run(
        [sdk_python, str(ROOT / "bench" / "sdk_local_mode.py"), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **SDK_ENV},
        timeout=timeout,
        cwd=work,
    )
    wall = time.monotonic() - began
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"SDK run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"wall": wall, **json.loads(line[len("RESULT ") :])}


# --------------------------------------------------------------------------------------------- serving
def bare_serve(model_dir: Path) -> dict[str, float]:
    port = free_port()
    began = time.monotonic()
    cid = docker(
        "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", "-v", f"{model_dir}:/opt/ml/model:ro", SERVE_IMAGE, "serve"
    ).strip()
    try:
        while ping(port) != 200:
            if time.monotonic() - began > 120:
                raise RuntimeError("bare serve container not ready after 120 s")
            time.sleep(0.01)
        return {"ping": time.monotonic() - began}
    finally:
        docker("rm", "-f", cid, check=False)


def smbyoc_serve(work: Path) -> dict[str, float]:
    port = free_port()
    ready = work / f"ready-{port}"
    log = work / f"local-serve-{port}.log"
    with open(log, "wb") as out:
        began = time.monotonic()
        proc = subprocess.Popen(
            [*SMBYOC, "local-serve", "--port", str(port), "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() - began > 300:
                raise RuntimeError(f"local-serve did not get ready: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        ready_s = time.monotonic() - began
        assert ping(port) == 200
    finally:
        stop_began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_s = time.monotonic() - stop_began
    m = re.search(r"\(([\d.]+) s to the first 200 on /ping\)", log.read_text())
    return {"ready": ready_s, "reported": float(m.group(1)) if m else float("nan"), "stop": stop_s}


# ------------------------------------------------------------------------------------------------ main
def summary(values: list[dict[str, Any]], key: str) -> str:
    xs = [v[key] for v in values]
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def image_size(tag: str) -> str:
    out = docker("image", "inspect", "-f", "{{.Size}}", tag, check=False).strip()
    return f"{int(out) / 1e6:,.0f} MB ({int(out) / 2**20:,.0f} MiB)" if out else "not built here"


def default_model_tar() -> Path:
    from smbyoc.emulator.default_model import cache_dir, example_digest

    return cache_dir() / "default-model" / example_digest() / "model.tar.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdk-python", default=os.environ.get("BENCH_SDK_PYTHON", "/tmp/bench-venv/bin/python"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--serve-reps", type=int, help="rounds for the serving part (default: --reps)")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    serve_reps = args.serve_reps or args.reps
    had_network = "sagemaker-local" in docker("network", "ls", "--format", "{{.Name}}").split()
    results: dict[str, Any] = {
        "load_before": load_avg(),
        "train": {"bare": [], "smbyoc": [], "sdk": []},
        "serve": {"bare": [], "smbyoc": [], "sdk": []},
    }
    began = time.monotonic()
    docker("build", "-q", "-t", NOOP_TAG, str(ROOT / "bench" / "noop_image"))
    with tempfile.TemporaryDirectory(prefix="smbyoc-emu-bench-") as tmp:
        work = Path(tmp)
        try:
            # warm-ups (not counted): page cache, docker-compose's first import, the SDK's first import
            bare_train(work)
            smbyoc_train(work, 0)
            (work / "sdk-warm").mkdir()
            sdk_run(args.sdk_python, ["train", NOOP_TAG, str(work / "sdk-warm")], work, 300)
            for i in range(1, args.reps + 1):
                print(f"-- train round {i}/{args.reps}  load {load_avg()}", flush=True)
                results["train"]["bare"].append(bare_train(work))
                results["train"]["smbyoc"].append(smbyoc_train(work, i))
                (work / f"sdk-train-{i}").mkdir()
                results["train"]["sdk"].append(
                    sdk_run(args.sdk_python, ["train", NOOP_TAG, str(work / f"sdk-train-{i}")], work, 300)
                )
                remove_compose_containers(work)
                print("   " + "  ".join(f"{k} {v[-1]['wall']:.2f} s" for k, v in results["train"].items()), flush=True)

            if not args.skip_serve:
                smbyoc_serve(work)  # warm-up; trains the default model once if it is not cached
                tar = default_model_tar()
                model_dir = work / "model"
                model_dir.mkdir()
                subprocess.run(["tar", "xzf", str(tar), "-C", str(model_dir)], check=True)
                for i in range(1, serve_reps + 1):
                    print(f"-- serve round {i}/{serve_reps}  load {load_avg()}", flush=True)
                    results["serve"]["bare"].append(bare_serve(model_dir))
                    results["serve"]["smbyoc"].append(smbyoc_serve(work))
                    sdk_dir = work / f"sdk-serve-{i}"
                    (sdk_dir / "model").mkdir(parents=True)
                    shutil.copy(tar, sdk_dir / "model" / "model.tar.gz")
                    results["serve"]["sdk"].append(
                        sdk_run(
                            args.sdk_python,
                            [
                                "deploy",
                                SERVE_IMAGE,
                                str(sdk_dir / "model" / "model.tar.gz"),
                                str(sdk_dir),
                                str(free_port()),
                                BODY,
                            ],
                            work,
                            300,
                        )
                    )
                    remove_compose_containers(work)
                    s = results["serve"]
                    print(
                        f"   bare ping {s['bare'][-1]['ping']:.2f} s  "
                        f"local-serve ready {s['smbyoc'][-1]['ready']:.2f} s "
                        f"(reported {s['smbyoc'][-1]['reported']:.2f})  SDK deploy {s['sdk'][-1]['deploy_s']:.2f} s "
                        f"usable {s['sdk'][-1]['usable_s']:.2f} s",
                        flush=True,
                    )
        finally:
            remove_compose_containers(work)
            if not had_network:
                docker("network", "rm", "sagemaker-local", check=False)
    results["load_after"] = load_avg()
    results["images"] = {
        t: image_size(t) for t in ("smbyoc/base:bookworm", "smbyoc/train:cpu", "smbyoc/serve:cpu", NOOP_TAG)
    }
    results["seconds"] = time.monotonic() - began

    t = results["train"]
    print("\n| Training, no-op image | median wall time (min, max) |\n|---|---|")
    print(f"| bare `docker run --rm IMAGE train` | {summary(t['bare'], 'wall')} |")
    print(f"| `smbyoc local-train --image IMAGE` (CLI start to exit) | {summary(t['smbyoc'], 'wall')} |")
    print(f'|   (its own "Completed in") | {summary(t["smbyoc"], "reported")} |')
    print(f"| SDK v2 local mode, whole process (python start to exit) | {summary(t['sdk'], 'wall')} |")
    print(f"|   `Estimator.fit()` only | {summary(t['sdk'], 'fit_s')} |")
    print(f"|   `import sagemaker` | {summary(t['sdk'], 'import_s')} |")
    print(
        "local-train - bare: "
        f"{statistics.median(x['wall'] for x in t['smbyoc']) - statistics.median(x['wall'] for x in t['bare']):.2f} s"
    )
    if not args.skip_serve:
        s = results["serve"]
        print("\n| Serving, smbyoc/serve:cpu + default model | median (min, max) |\n|---|---|")
        print(f"| bare `docker run -p ... IMAGE serve` → first 200 on /ping | {summary(s['bare'], 'ping')} |")
        print(
            "| `smbyoc local-serve` command → ready file (after first 200 on /ping) | "
            f"{summary(s['smbyoc'], 'ready')} |"
        )
        print(f'|   (its own "s to the first 200 on /ping") | {summary(s["smbyoc"], "reported")} |')
        print(f"|   Ctrl-C → local-serve exited, container removed | {summary(s['smbyoc'], 'stop')} |")
        print(f'| SDK v2 `Model.deploy(instance_type="local")` returns | {summary(s["sdk"], "deploy_s")} |')
        print(f"|   deploy() + first `predict()` answer | {summary(s['sdk'], 'usable_s')} |")
        print(f"|   SDK process, python start to exit | {summary(s['sdk'], 'wall')} |")
    print("\n| Image | size |\n|---|---|")
    for tag, size in results["images"].items():
        print(f"| `{tag}` | {size} |")
    print(f"\nload average before {results['load_before']}, after {results['load_after']}; {results['seconds']:.0f} s")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
