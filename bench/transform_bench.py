"""Batch transform benchmark: `smbyoc local-transform` vs SageMaker Python SDK v2 local mode's `Transformer`, with
the same model in-process as the ceiling, side by side in one run.

Inputs (made here, deterministic): a 200,000-row CSV of the default example's 8 float features, and a 20,000-line
JSON Lines file of the same rows. Model: the default example's model.tar.gz (trained once, cached). Image:
smbyoc/serve:cpu. Settings, as the issue fixes them: MultiRecord, SplitType Line, MaxPayloadInMB 6, AssembleWith
Line, MaxConcurrentTransforms = CPU count for smbyoc (SDK local mode always sends 1).

  ceiling       the same model in this process: the example's input_fn/predict_fn/output_fn over the same
                6 MB mini-batches, one after the other (decode + predict + encode, no HTTP)
  local-transform  `smbyoc local-transform --image smbyoc/serve:cpu ...` wall time, CLI start to exit
  SDK v2        `Model(...).transformer(strategy="MultiRecord", ...).transform(..., split_type="Line")`

Rounds are interleaved (--reps); medians reported, with records/s and ratios.

    scripts/setup-bench-tools && sh bench/setup_bench_venv.sh
    .venv/bin/python bench/transform_bench.py --sdk-python /tmp/bench-venv/bin/python [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVE_IMAGE = "smbyoc/serve:cpu"
SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
SDK_ENV = {
    "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIABENCHFAKE",
    "AWS_SECRET_ACCESS_KEY": "fake",
}
MB = 1024 * 1024
#: local-transform's transform phase per (input folder, content type): seconds of each round.
PHASES: dict[tuple[str, str], list[float]] = {}


def make_inputs(work: Path, rows: int, jsonl_rows: int) -> dict[str, tuple[Path, str, int]]:
    """{name: (directory holding one input object, content type, records)} from the example's own data."""
    from smbyoc.examples import default_example

    example = default_example()
    train_csv = next(Path(example.channels["train"]).glob("*.csv"))
    table = np.loadtxt(train_csv, delimiter=",", skiprows=1, usecols=range(8), dtype=np.float64)
    rng = np.random.default_rng(7)
    picked = table[rng.integers(0, len(table), rows)] * rng.normal(1.0, 0.01, (rows, 8))
    csv_dir = work / "in-csv"
    csv_dir.mkdir()
    np.savetxt(csv_dir / "rows.csv", picked, delimiter=",", fmt="%.5g")
    jsonl_dir = work / "in-jsonl"
    jsonl_dir.mkdir()
    with (jsonl_dir / "rows.jsonl").open("w") as f:
        for row in picked[:jsonl_rows]:
            f.write(json.dumps([round(float(v), 5) for v in row]) + "\n")
    return {"csv": (csv_dir, "text/csv", rows), "jsonl": (jsonl_dir, "application/jsonlines", jsonl_rows)}


def model_tarball() -> Path:
    from smbyoc.docker.client import get_client
    from smbyoc.emulator.default_model import default_model
    from smbyoc.images.defaults import ensure_default_image

    client = get_client()
    ensure_default_image(client, "serve")
    return default_model("docker", client, ensure_default_image(client, "train"))


def ceiling(model_tar: Path, input_dir: Path, content_type: str, records: int) -> float:
    """Seconds for the model in this process over the same 6 MB mini-batches."""
    import importlib.util
    import tarfile

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(model_tar) as tar:
            tar.extractall(tmp, filter="data")
        spec = importlib.util.spec_from_file_location("bench_inference", Path(tmp) / "code" / "inference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        model = module.model_fn(tmp)
        data = next(input_dir.iterdir()).read_bytes()
        batches, start = [], 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + 6 * MB) + 1 if len(data) - start > 6 * MB else len(data)
            batches.append(data[start:end])
            start = end
        t0 = time.perf_counter()
        done = 0
        for body in batches:
            out, _ = module.output_fn(module.predict_fn(module.input_fn(body, content_type), model), content_type)
            done += out.count("\n")
        seconds = time.perf_counter() - t0
        assert done == records, (done, records)
        return seconds


def output_records(out: Path) -> int:
    """Lines in every ``*.out`` file under ``out`` (AssembleWith Line: one per record)."""
    return sum(f.read_bytes().count(b"\n") for f in out.rglob("*.out"))


def local_transform(model_tar: Path, input_dir: Path, content_type: str, work: Path, records: int) -> float:
    """Wall seconds, CLI start to exit; the transform phase (TransformStartTime -> TransformEndTime of the
    DescribeTransformJob-shaped --json result: instances healthy -> last object written) goes to PHASES."""
    out = work / f"out-{time.monotonic_ns()}"
    argv = [*SMBYOC, "local-transform", "--image", SERVE_IMAGE, "--model-data", str(model_tar),
            "--input", str(input_dir), "--output", str(out), "--content-type", content_type, "--accept", content_type,
            "--split-type", "Line", "--batch-strategy", "MultiRecord", "--max-payload", "6",
            "--assemble-with", "Line", "--max-concurrent-transforms", str(os.cpu_count() or 1), "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - t0
    described = json.loads(done.stdout)
    began, ended = (datetime.fromisoformat(described[k]) for k in ("TransformStartTime", "TransformEndTime"))
    PHASES.setdefault((input_dir.name, content_type), []).append((ended - began).total_seconds())
    assert output_records(out) == records, f"local-transform wrote {output_records(out)} records, not {records}"
    shutil.rmtree(out)
    return seconds


def sdk_transform(sdk_python: str, model_tar: Path, input_dir: Path, content_type: str, work: Path,
                  records: int) -> float:
    out = work / f"sdk-out-{time.monotonic_ns()}"
    workdir = work / f"sdk-{time.monotonic_ns()}"
    workdir.mkdir()
    argv = [sdk_python, str(ROOT / "bench" / "sdk_local_mode.py"), "transform", SERVE_IMAGE, str(model_tar),
            str(workdir), str(input_dir), str(out), content_type, "Line", "MultiRecord", "6"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **SDK_ENV}, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"SDK local mode failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    # SDK local mode appends one newline per response, not per record: count the predictions, not the lines
    written = sum(len([x for x in f.read_bytes().split(b"\n") if x.strip()]) for f in out.rglob("*.out"))
    assert written == records, f"SDK local mode wrote {written} records, not {records}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdk-python", help="python of a venv with sagemaker<3 (bench/setup_bench_venv.sh)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--jsonl-rows", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smbyoc-transform-bench-") as tmp:
        work = Path(tmp)
        # under the work directory: SDK local mode refuses to mount from "restricted system paths" (/root...)
        model_tar = Path(shutil.copy2(model_tarball(), work / "model.tar.gz"))
        inputs = make_inputs(work, args.rows, args.jsonl_rows)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            for name, (input_dir, content_type, records) in inputs.items():
                same = (model_tar, input_dir, content_type)
                runs = [("ceiling", partial(ceiling, *same, records)),
                        ("local-transform", partial(local_transform, *same, work, records))]
                if args.sdk_python:
                    runs.append(("SDK v2 local mode", partial(sdk_transform, args.sdk_python, *same, work, records)))
                for system, run in runs[rep % len(runs):] + runs[:rep % len(runs)]:  # rotate the order
                    seconds = run()
                    times.setdefault((name, system), []).append(seconds)
                    print(f"round {rep + 1} {name:5} {system:18} {seconds:7.2f} s "
                          f"{records / seconds:10.0f} records/s", file=sys.stderr, flush=True)
        print(f"\n{args.reps} interleaved rounds, medians; {os.cpu_count()} CPUs; MultiRecord, Line, 6 MB\n")
        print("| input | system | wall s | records/s (wall) | vs SDK local mode | transform phase s "
              "| records/s (phase) | vs in-process ceiling |")
        print("|---|---|---|---|---|---|---|---|")
        for name, (input_dir, content_type, records) in inputs.items():
            base = times.get((name, "SDK v2 local mode"))
            top = statistics.median(times[(name, "ceiling")])
            for system in ("ceiling", "local-transform", "SDK v2 local mode"):
                if (name, system) not in times:
                    continue
                median = statistics.median(times[(name, system)])
                vs_sdk = f"{statistics.median(base) / median:.1f}x" if base else "-"
                phase = statistics.median(PHASES[(input_dir.name, content_type)]) if system == "local-transform" else (
                    median if system == "ceiling" else None)
                phase_cells = (f"{phase:.2f} | {records / phase:,.0f} | {top / phase:.2f}" if phase is not None
                               else "- | - | -")
                print(f"| {name} ({records:,} rows) | {system} | {median:.2f} | {records / median:,.0f} | {vs_sdk} "
                      f"| {phase_cells} |")

if __name__ == "__main__":
    main()
