"""SageMaker Python SDK v2 `fit()` + `deploy()` + `predict()` through `smbyoc api --mode docker` vs SDK local mode.

Same images (private tags of smbyoc/train:cpu and smbyoc/serve:cpu, taken once at the start so that a rebuild of
smbyoc/* meanwhile does not change what is measured), same code and data (the bundled default example, script
mode: `entry_point="train.py"`, `source_dir=<example>`), same one-row `predict()`, same run, interleaved rounds
after one uncounted warm-up of each arm:

  api    `sagemaker.Session(sagemaker_client=..., sagemaker_runtime_client=...)` pointed at `smbyoc api --mode
         docker` (started here on loopback, any free port), S3 (and CloudWatch Logs, which fit() tails) = a
         moto server (started here on loopback);
         Estimator(instance_type="ml.m5.large").fit(s3://...) -> deploy(ml.m5.large) -> predict -> delete
  local  LocalSession (bench/sdk_local_mode.py's offline set-up, docker-compose); Estimator(instance_type="local")
         .fit(file://...) -> deploy(instance_type="local") -> predict -> delete

Each arm runs in a fresh Python process (`--sdk-python`, default: this interpreter) and times fit, deploy,
predict, delete and their total (not `import sagemaker`). For the api arm the server's own descriptions give
what the SDK's polling hides: the training job's CreationTime -> LastModifiedTime (Completed), and the endpoint's
CreationTime -> LastModifiedTime (InService), read right after deploy() returns.

    .venv/bin/python bench/api_bench.py [--rounds 3] [--sdk-python /tmp/bench-venv/bin/python] [--json-out F]

Everything is removed at the end, also on Ctrl-C: endpoints (by the arm itself), compose containers under this
run's temporary directory, the `sagemaker-local` network when this run created it, the api server and moto,
the private image tags and the temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TRAIN_IMAGE, SERVE_IMAGE = "smbyoc/train:cpu", "smbyoc/serve:cpu"
BENCH_TRAIN, BENCH_SERVE = "smbyoc-bench/api-train:cpu", "smbyoc-bench/api-serve:cpu"
BUCKET = "api-bench"
ROLE = "arn:aws:iam::000000000000:role/bench"
PHASES = ("fit", "deploy", "predict", "delete", "total")


# ------------------------------------------------------------------------------------------ child: one arm
def _arm(arm: str, workdir: str, spec_json: str) -> dict[str, Any]:
    spec = json.loads(spec_json)
    import boto3
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.serializers import CSVSerializer

    common = {"image_uri": spec["train_image"], "role": ROLE, "instance_count": 1, "entry_point": "train.py",
              "source_dir": spec["source_dir"]}
    if arm == "api":
        kw = {"endpoint_url": spec["api_url"], "region_name": "us-east-1"}
        sm, rt = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
        session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"), sagemaker_client=sm,
                                    sagemaker_runtime_client=rt, default_bucket=BUCKET)
        session.sagemaker_config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {
            "TelemetryOptOut": True}}}}  # as sdk_local_mode.session(): no telemetry GET to S3
        instance_type = "ml.m5.large"
        estimator = Estimator(**common, instance_type=instance_type, output_path=f"s3://{BUCKET}/jobs",
                              sagemaker_session=session)
        inputs = {ch: f"s3://{BUCKET}/data/{ch}/" for ch in spec["channels"]}
    else:
        sys.path.insert(0, str(BENCH))
        import sdk_local_mode  # its offline LocalSession and the loopback-port patch

        session = sdk_local_mode.session(workdir, int(spec["port"]))
        instance_type = "local"
        estimator = Estimator(**common, instance_type=instance_type, output_path=f"file://{workdir}/out",
                              sagemaker_session=session)
        inputs = {ch: f"file://{path}" for ch, path in spec["channels"].items()}

    out: dict[str, Any] = {}
    t0 = time.monotonic()
    estimator.fit(inputs)  # the defaults: wait=True, logs="All"
    t1 = time.monotonic()
    out["fit"] = t1 - t0
    if arm == "api":
        job = estimator.latest_training_job.describe()
        out["job_server"] = job["LastModifiedTime"].timestamp() - job["CreationTime"].timestamp()
        if job.get("TrainingStartTime") and job.get("TrainingEndTime"):
            out["job_training"] = job["TrainingEndTime"].timestamp() - job["TrainingStartTime"].timestamp()
    predictor = None
    try:
        predictor = estimator.deploy(initial_instance_count=1, instance_type=instance_type,
                                     image_uri=spec["serve_image"], serializer=CSVSerializer(),
                                     deserializer=JSONDeserializer())
        t2 = time.monotonic()
        out["deploy"] = t2 - t1
        if arm == "api":
            ep = session.sagemaker_client.describe_endpoint(EndpointName=predictor.endpoint_name)
            assert ep["EndpointStatus"] == "InService", ep
            out["endpoint_server"] = ep["LastModifiedTime"].timestamp() - ep["CreationTime"].timestamp()
        answer = predictor.predict(spec["row"])
        t3 = time.monotonic()
        out["predict"] = t3 - t2
        assert "predictions" in answer, answer
        out["answer"] = answer
    finally:
        t3 = time.monotonic()
        if predictor is not None:
            predictor.delete_model()  # first: it reads the endpoint configuration that delete_endpoint() removes
            predictor.delete_endpoint()
    out["delete"] = time.monotonic() - t3
    out["total"] = time.monotonic() - t0
    return out


# -------------------------------------------------------------------------------------------- parent
def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_compose_containers(root: Path) -> None:
    """Containers docker-compose created for SDK local-mode jobs and endpoints under `root`."""
    for cid in docker("ps", "-aq", "--filter", "label=com.docker.compose.version").split():
        wd = docker("inspect", "-f", '{{index .Config.Labels "com.docker.compose.project.working_dir"}}', cid,
                    check=False).strip()
        if wd.startswith(str(root)):
            docker("rm", "-f", cid, check=False)


def wait_for(what: str, check: Any, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGINT ``proc`` (so that it cleans up after itself), then wait for it; SIGKILL after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_arm(sdk_python: str, arm: str, work: Path, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=work))
    proc = subprocess.Popen([sdk_python, str(Path(__file__).resolve()), "_arm", arm, str(workdir), json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except BaseException:  # Ctrl-C, SIGTERM, timeout: let the arm delete its endpoint first
        interrupt(proc)
        raise
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{arm} arm failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-4000:]}")
    return dict(json.loads(line[len("RESULT "):]))


def summary(values: list[dict[str, Any]], key: str) -> str:
    xs = [v[key] for v in values if key in v]
    if not xs:
        return "—"
    d = 2 if statistics.median(xs) < 1 else 1
    return f"{statistics.median(xs):.{d}f} s ({min(xs):.{d}f}, {max(xs):.{d}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdk-python", default=sys.executable, help="a Python with sagemaker<3 (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C does

    from smbyoc.examples import default_example

    example = default_example()
    lines = next(example.channels["validation"].glob("*.csv")).read_text().splitlines()
    row = lines[1].rsplit(",", 1)[0] + "\n"  # one row of the example's features, without the label

    results: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "load_before": load_avg(), "api": [], "local": []}
    had_network = "sagemaker-local" in docker("network", "ls", "--format", "{{.Name}}").split()
    began = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    tagged: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="smbyoc-api-bench-"))
    try:
        for src, dst in ((TRAIN_IMAGE, BENCH_TRAIN), (SERVE_IMAGE, BENCH_SERVE)):
            docker("tag", src, dst)
            tagged.append(dst)
        results["images"] = {t: docker("image", "inspect", "-f", "{{.Id}}", t).strip() for t in tagged}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        moto_port = free_port()
        moto_url = f"http://127.0.0.1:{moto_port}"
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                    "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_ENDPOINT_URL": moto_url, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
        bindir = Path(sys.executable).parent
        moto_bin = shutil.which("moto_server", path=str(bindir)) or shutil.which("moto_server")
        if moto_bin is None:
            raise SystemExit("moto_server not found (pip install 'moto[server]')")
        moto = subprocess.Popen([moto_bin, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        procs.append(moto)

        def moto_up() -> bool:
            import urllib.request

            try:
                with urllib.request.urlopen(f"{moto_url}/moto-api/", timeout=2):
                    return True
            except OSError:
                return False

        wait_for("moto_server", moto_up, moto)
        ready = work / "api-url.txt"
        api_log = (work / "api.log").open("wb")
        api = subprocess.Popen([sys.executable, "-m", "smbyoc.cli", "api", "--mode", "docker", "--port", "0",
                                "--state-dir", str(work / "api-state"), "--ready-file", str(ready),
                                "--endpoint-url", moto_url], stdout=api_log, stderr=subprocess.STDOUT, env=env)
        procs.append(api)
        wait_for("smbyoc api", ready.exists, api)
        api_url = ready.read_text().strip()

        import boto3

        s3 = boto3.Session(region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing").client("s3", endpoint_url=moto_url)
        s3.create_bucket(Bucket=BUCKET)
        for channel, folder in example.channels.items():
            for file in folder.iterdir():
                s3.upload_file(str(file), BUCKET, f"data/{channel}/{file.name}")

        spec: dict[str, Any] = {"train_image": BENCH_TRAIN, "serve_image": BENCH_SERVE, "api_url": api_url,
                                "source_dir": str(example.source_dir), "row": row,
                                "channels": {ch: str(p) for ch, p in example.channels.items()}}
        for i in range(args.rounds + 1):
            label = "warm-up" if i == 0 else f"round {i}/{args.rounds}"
            order = ("api", "local") if i % 2 == 0 else ("local", "api")
            for arm in order:
                print(f"-- {label} {arm}  load {load_avg()}", flush=True)
                r = run_arm(args.sdk_python, arm, work, {**spec, "port": free_port()}, env)
                remove_compose_containers(work)
                print("   " + "  ".join(f"{k} {r[k]:.2f} s" for k in (*PHASES, "job_server", "endpoint_server")
                                        if k in r), flush=True)
                if i > 0:
                    results[arm].append(r)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        remove_compose_containers(work)
        if not had_network:
            docker("network", "rm", "sagemaker-local", check=False)
        for proc in reversed(procs):
            interrupt(proc)
        for t in tagged:
            docker("rmi", t, check=False)
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = load_avg()
    results["seconds"] = time.monotonic() - began
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")

    api, local = results["api"], results["local"]
    print(f"\n{results['date']}  load {results['load_before']} before, {results['load_after']} after, "
          f"{results['seconds']:.0f} s in all\n")
    print("| Phase | through `smbyoc api --mode docker` | SDK local mode | api / local |\n|---|---|---|---|")
    for phase in PHASES:
        ratio = statistics.median(x[phase] for x in api) / statistics.median(x[phase] for x in local)
        print(f"| {phase} | {summary(api, phase)} | {summary(local, phase)} | {ratio:.2f} |")
    print(f"| training job, server's CreationTime → Completed | {summary(api, 'job_server')} | | |")
    print(f"| endpoint, server's CreationTime → InService | {summary(api, 'endpoint_server')} | | |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_arm":
        print("\nRESULT " + json.dumps(_arm(*sys.argv[2:5]), default=str), flush=True)  # the SDK ends lines with "!"
    else:
        sys.exit(main())
