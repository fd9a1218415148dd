"""Training fidelity on a real Docker Engine: multi-host, input modes, lifecycle, isolation, devices.

A contract-only probe image (tests/docker/fidelity_image, nothing of smbyoc inside) reports what each
container saw; the DDP and spot proofs run the bundled default example in the default train image.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
PROBE_DIR = Path(__file__).parent / "fidelity_image"
PROBE_TAG = "smbyoc-test/fidelity-probe:latest"


@pytest.fixture(scope="session")
def probe_image(docker_client: Any) -> Any:
    image, _ = docker_client.images.build(path=str(PROBE_DIR), tag=PROBE_TAG, rm=True,
                                          buildargs={"BASE_IMAGE": "smbyoc/base:bookworm"},
                                          labels={"com.smbyoc.test": "1"})
    yield PROBE_TAG
    with contextlib.suppress(Exception):
        docker_client.images.remove(image.id, force=True)


def smbyoc(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def describe(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json result: standard output holds the JSON document alone (the logs go to stderr)."""
    return json.loads(proc.stdout)


def members(out: Path, job: str, name: str = "model.tar.gz") -> dict[str, bytes]:
    with tarfile.open(out / job / "output" / name) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def reports(out: Path, job: str) -> dict[str, dict[str, Any]]:
    return {k[:-5]: json.loads(v) for k, v in members(out, job).items() if k.startswith("algo-")}


def leftovers(docker_client: Any, job: str) -> list[str]:
    found = [c.name for c in docker_client.containers.list(all=True, filters={"label": f"com.smbyoc.job={job}"})]
    found += [n.name for n in docker_client.networks.list(filters={"label": f"com.smbyoc.job={job}"})]
    return found


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# -- 1. multi-host ------------------------------------------------------------------------------------


def test_three_hosts_resolve_each_other_shard_and_merge_models(probe_image: str, docker_client: Any,
                                                               tmp_path: Path) -> None:
    shared = write_files(tmp_path / "shared", {f"s{i}.txt": f"s{i}" for i in range(2)})
    sharded = write_files(tmp_path / "sharded", {f"part-{i}.txt": f"p{i}" for i in range(7)})
    objects = write_files(tmp_path / "objects", {"a/1.txt": "one", "b/2.txt": "two", "unused.txt": "x"})
    manifest = tmp_path / "train.manifest"
    manifest.write_text(json.dumps([{"prefix": str(objects)}, "b/2.txt", "a/1.txt"]))
    started = time.monotonic()
    proc = smbyoc("local-train", "--image", probe_image, "--instance-count", "3", "--instance-type", "ml.m5.large",
                  "-c", f"shared={shared}", "-c", f"sharded={sharded}", "-c", f"listed={manifest}",
                  "--distribution", "sharded=ShardedByS3Key", "--s3-data-type", "listed=ManifestFile",
                  "--input-mode", "shared=FastFile", "-H", "clash=1",
                  "--job-name", "fid-multi", "-o", "out", "--json", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = describe(proc)
    assert result["TrainingJobStatus"] == "Completed"
    assert [h["Host"] for h in result["Hosts"]] == ["algo-1", "algo-2", "algo-3"]
    seen = reports(tmp_path / "out", "fid-multi")
    assert sorted(seen) == ["algo-1", "algo-2", "algo-3"]
    shards = []
    for host, report in seen.items():
        rc = report["resourceconfig"]
        assert rc["current_host"] == host == report["hostname"]
        assert rc["hosts"] == ["algo-1", "algo-2", "algo-3"]
        assert rc["instance_groups"][0]["hosts"] == rc["hosts"]
        assert all(report["resolved"][h] for h in rc["hosts"]), report["resolved"]
        assert report["inputdataconfig"]["sharded"]["S3DistributionType"] == "ShardedByS3Key"
        assert report["inputdataconfig"]["shared"]["TrainingInputMode"] == "FastFile"
        channels = report["channels"]
        assert channels["shared"]["files"] == ["s0.txt", "s1.txt"] and not channels["shared"]["writable"]
        assert channels["sharded"]["writable"]  # File mode: a copy, not the user's folder
        assert channels["listed"]["files"] == ["a/1.txt", "b/2.txt"]
        assert channels["listed"]["contents"] == {"a/1.txt": "one", "b/2.txt": "two"}
        shards.append(channels["sharded"]["files"])
    # every object exactly once, host i gets keys i, i+n, ... of the sorted keys
    assert sorted(f for s in shards for f in s) == [f"part-{i}.txt" for i in range(7)]
    assert shards[0] == ["part-0.txt", "part-3.txt", "part-6.txt"]
    assert set(members(tmp_path / "out", "fid-multi")) == {"algo-1.json", "algo-2.json", "algo-3.json",
                                                           "common.txt"}
    assert "common.txt (written by algo-1 and algo-2)" in proc.stderr
    assert members(tmp_path / "out", "fid-multi")["common.txt"] == b"algo-1"
    assert "[algo-2] probe done algo-2" in proc.stderr  # --json: the logs go to stderr
    assert leftovers(docker_client, "fid-multi") == []
    print(f"3-host job wall time {elapsed:.1f} s")


def test_one_failing_host_fails_the_job_and_stops_the_others(probe_image: str, docker_client: Any,
                                                             tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", probe_image, "--instance-count", "2", "-H", "action=fail_host",
                  "-H", "fail_host=algo-2", "-H", "fail_after=1", "--job-name", "fid-fail", "-o", "out", "--json",
                  cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    result = describe(proc)
    assert result["TrainingJobStatus"] == "Failed"
    # SageMaker's shape: AlgorithmError and the failure file; which host failed is in Hosts.
    assert result["FailureReason"] == "AlgorithmError: ProbeError: algo-2 gave up", result["FailureReason"]
    hosts = {h["Host"]: h for h in result["Hosts"]}
    assert hosts["algo-1"].get("StoppedByEmulator") and hosts["algo-2"]["ExitCode"] == 3
    assert hosts["algo-2"]["FailureReason"] == "ProbeError: algo-2 gave up" and "FailureReason" not in hosts["algo-1"]
    assert reports(tmp_path / "out", "fid-fail")["algo-1"]["sigterm"] is True  # stopped with SIGTERM
    assert leftovers(docker_client, "fid-fail") == []


DNS_PROBE_TRAIN = """#!/usr/bin/env python3
import json, os, socket, subprocess, sys, time

rc = json.load(open("/opt/ml/input/config/resourceconfig.json"))
host = rc["current_host"]
report = {"host": host, "own_address": socket.gethostbyname(host)}
if host == "algo-1":
    json.dump(report, open(f"/opt/ml/model/{host}.json", "w"))
    print("algo-1 exits at once", flush=True)
    sys.exit(0)
# Wait until Docker's embedded DNS no longer knows algo-1 (it has exited), then a few seconds more.
deadline = time.time() + 90
while time.time() < deadline:
    if subprocess.run(["getent", "-s", "dns", "hosts", "algo-1"], capture_output=True).returncode != 0:
        report["docker_dns"] = "forgotten"
        break
    time.sleep(0.2)
else:
    report["docker_dns"] = "still known"
time.sleep(3)
try:
    report["resolved"] = socket.gethostbyname("algo-1")
except OSError as e:
    report["resolved"] = None
    report["error"] = str(e)
report["getent"] = subprocess.run(["getent", "hosts", "algo-1"], capture_output=True, text=True).stdout.strip()
json.dump(report, open(f"/opt/ml/model/{host}.json", "w"))
print(f"algo-2 resolves algo-1 after it exited: {report}", flush=True)
if report["resolved"] is None:
    open("/opt/ml/output/failure", "w").write(f"DnsError: algo-2 cannot resolve algo-1: {report}")
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def dns_probe_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A contract-only image whose algo-1 exits at once while algo-2 resolves it later."""
    context = tmp_path_factory.mktemp("dns-probe")
    (context / "train").write_text(DNS_PROBE_TRAIN)
    (context / "Dockerfile").write_text("FROM smbyoc/base:bookworm\nCOPY train /opt/program/train\n"
                                        "RUN chmod 0755 /opt/program/train\nENV PATH=/opt/program:$PATH\n")
    tag = "smbyoc-test/dns-probe:latest"
    image, _ = docker_client.images.build(path=str(context), tag=tag, rm=True, labels={"com.smbyoc.test": "1"})
    yield tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(image.id, force=True)


def test_hosts_stay_resolvable_after_they_exit(dns_probe_image: str, docker_client: Any, tmp_path: Path) -> None:
    """SageMaker keeps every algo-N resolvable for the whole job; Docker's DNS forgets stopped containers."""
    proc = smbyoc("local-train", "--image", dns_probe_image, "--instance-count", "2", "--job-name", "fid-dns",
                  "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert describe(proc)["TrainingJobStatus"] == "Completed"
    seen = reports(tmp_path / "out", "fid-dns")
    later = seen["algo-2"]
    assert later["docker_dns"] == "forgotten", later  # algo-1 had really gone when algo-2 looked it up
    assert later["resolved"] == seen["algo-1"]["own_address"], later
    assert later["getent"].split() == [seen["algo-1"]["own_address"], "algo-1"], later
    assert "algo-2 resolves algo-1 after it exited" in proc.stderr
    assert leftovers(docker_client, "fid-dns") == []


# -- 2. Pipe mode ---------------------------------------------------------------------------------------


def test_pipe_mode_streams_epochs_gzip_and_recordio(probe_image: str, docker_client: Any, tmp_path: Path) -> None:
    plain = write_files(tmp_path / "plain", {"b.txt": "bbb\n", "a.txt": "a" * 100_000})
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    (zipped / "x.gz").write_bytes(gzip.compress(b"hello gzip " * 1000))
    records = write_files(tmp_path / "records", {"r1": "first", "r2": "second record"})
    proc = smbyoc("local-train", "--image", probe_image, "-H", "action=pipe", "-H", "epochs=3",
                  "-c", f"plain={plain}", "-c", f"zipped={zipped}", "-c", f"records={records}",
                  "--input-mode", "Pipe", "--compression", "zipped=Gzip", "--record-wrapper", "records=RecordIO",
                  "--job-name", "fid-pipe", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    pipe = reports(tmp_path / "out", "fid-pipe")["algo-1"]["pipe"]
    expected_plain = ("a" * 100_000 + "bbb\n").encode()  # sorted by key
    assert [e["sha256"] for e in pipe["plain"]] == [hashlib.sha256(expected_plain).hexdigest()] * 3
    assert [e["bytes"] for e in pipe["zipped"]] == [len(b"hello gzip " * 1000)] * 3
    assert pipe["records"][0]["records"] == ["first", "second record"]
    assert leftovers(docker_client, "fid-pipe") == []


# -- 3. lifecycle ---------------------------------------------------------------------------------------


def test_max_runtime_sigterm_then_failed_max_runtime_exceeded(probe_image: str, docker_client: Any,
                                                              tmp_path: Path) -> None:
    started = time.monotonic()
    proc = smbyoc("local-train", "--image", probe_image, "-H", "action=sleep", "--max-runtime", "3",
                  "--job-name", "fid-maxrt", "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode != 0
    result = describe(proc)
    assert (result["TrainingJobStatus"], result["SecondaryStatus"]) == ("Failed", "MaxRuntimeExceeded")
    assert result["StoppingCondition"] == {"MaxRuntimeInSeconds": 3}
    assert "MaxRuntimeExceeded" in result["FailureReason"]
    assert reports(tmp_path / "out", "fid-maxrt")["algo-1"]["sigterm"] is True
    assert time.monotonic() - started < 60


def test_max_runtime_kills_a_program_that_ignores_sigterm(probe_image: str, docker_client: Any,
                                                          tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", probe_image, "-H", "action=sleep", "-H", "ignore_term=1",
                  "--max-runtime", "2", "--stop-timeout", "2", "--job-name", "fid-kill", "-o", "out", "--json",
                  cwd=tmp_path)
    result = describe(proc)
    assert result["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert result["Hosts"][0]["ExitCode"] == 137  # SIGKILL after the grace period
    assert leftovers(docker_client, "fid-kill") == []


def test_spot_interruption_restarts_and_resumes_from_checkpoints(probe_image: str, docker_client: Any,
                                                                 tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc = smbyoc("local-train", "--image", probe_image, "-H", "action=epochs", "-H", "epochs=8",
                  "-H", "epoch_seconds=0.5", "--checkpoint-s3-dir", str(ckpt), "--spot-interruption-after", "2",
                  "--job-name", "fid-spot", "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = describe(proc)
    assert result["TrainingJobStatus"] == "Completed" and result["InterruptionCount"] == 1
    statuses = [t["Status"] for t in result["SecondaryStatusTransitions"]]
    assert statuses == ["Starting", "Downloading", "Training", "Interrupted", "Restarting", "Training",
                        "Uploading", "Completed"]
    report = reports(tmp_path / "out", "fid-spot")["algo-1"]
    assert 0 < report["resumed_from"] < 8 and report["last_epoch"] == 8
    assert report["model_dir_at_start"] == []  # a fresh model directory after the restart
    assert (ckpt / "epoch.txt").read_text() == "8"  # synced back at the end
    assert result["CheckpointConfig"]["S3Uri"] == ckpt.resolve().as_uri()


# -- 4. isolation and devices ---------------------------------------------------------------------------


def test_network_isolation_leaves_only_loopback(probe_image: str, docker_client: Any, tmp_path: Path) -> None:
    proc = smbyoc("local-train", "--image", probe_image, "--network-isolation", "-H", "action=sleep",
                  "-H", "sleep=0", "--job-name", "fid-iso",
                  "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert describe(proc)["EnableNetworkIsolation"] is True
    assert reports(tmp_path / "out", "fid-iso")["algo-1"]["interfaces"] == ["lo"]


def test_gpu_and_neuron_requests(probe_image: str, docker_client: Any, tmp_path: Path) -> None:
    """Argument shapes only: this machine has no GPU and no Neuron device."""
    from smbyoc.emulator.docker_training import DockerTrainingBackend
    from smbyoc.emulator.job_spec import TrainingJobSpec
    from smbyoc.emulator.layout import lay_out_host

    backend = DockerTrainingBackend(client=docker_client, image=probe_image)
    for instance_type, gpus, count in (("ml.g5.xlarge", None, 1), ("ml.p4d.24xlarge", None, 8),
                                       ("ml.m5.large", -1, -1), ("ml.g5.12xlarge", 0, None)):
        spec = TrainingJobSpec(job_name="gpu", hyperparameters={}, instance_type=instance_type, gpus=gpus)
        tree = lay_out_host(spec, "algo-1", tmp_path / instance_type)
        args = backend.container_args(spec, tree, "net", "abc")
        if count is None:
            assert "device_requests" not in args
        else:
            (request,) = args["device_requests"]
            assert request["Count"] == count and request["Capabilities"] == [["gpu"]]
    if not list(Path("/dev").glob("neuron*")):
        proc = smbyoc("local-train", "--image", probe_image, "--instance-type", "ml.inf2.xlarge",
                      "--job-name", "fid-neuron", "-o", "out", cwd=tmp_path)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Neuron" in errors[0] and "/dev/neuron" in errors[0], proc.stderr
        assert leftovers(docker_client, "fid-neuron") == []
        assert not (tmp_path / "out").exists()


# -- proofs with the bundled default example in the default train image ---------------------------------

EPOCHS = 60


def example_args(train_image: str) -> list[str]:
    from smbyoc.examples import default_example

    ex = default_example()
    return ["--image", train_image, "-e", ex.entry_point, "-s", str(ex.source_dir),
            *(arg for name, path in ex.channels.items() for arg in ("-c", f"{name}={path}")),
            "-H", f"epochs={EPOCHS}"]


def model_json(out: Path, job: str) -> dict[str, Any]:
    return json.loads(members(out, job)["model.json"])


@pytest.fixture(scope="module")
def baseline(default_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted one-host run of the default example."""
    work = tmp_path_factory.mktemp("baseline")
    proc = smbyoc("local-train", *example_args(default_images["train"]), "--job-name", "fid-base", "-o", "out",
                  cwd=work)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    model = model_json(work / "out", "fid-base")
    model["mid_seconds"] = seconds_to_epoch(proc.stdout, EPOCHS // 2)
    return model


def seconds_to_epoch(log: str, epoch: int) -> float:
    """Seconds from the container's first log line to the end of ``epoch`` (container timestamps)."""
    import datetime as dt

    def stamp(line: str) -> dt.datetime:
        return dt.datetime.strptime(line.split("] ", 1)[1][:23], "%Y-%m-%d %H:%M:%S,%f")

    lines = [line for line in log.splitlines() if line.startswith("[algo-1] 20")]
    end = next(line for line in lines if f"INFO train: epoch={epoch} " in line)
    return (stamp(end) - stamp(lines[0])).total_seconds()


def test_default_example_ddp_on_two_containers_matches_one_host(default_images: dict[str, str], baseline: dict,
                                                                 docker_client: Any, tmp_path: Path) -> None:
    proc = smbyoc("local-train", *example_args(default_images["train"]), "--instance-count", "2",
                  "--env", "SMBYOC_LAUNCHER=torchrun", "--job-name", "fid-ddp", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "[algo-2]" in proc.stdout and "rank 1 of 2 (gloo)" in proc.stdout
    assert "--nnodes 2" in proc.stdout
    model = model_json(tmp_path / "out", "fid-ddp")
    assert model["epochs_completed"] == EPOCHS and model["completed"]
    # DDP over 2 hosts averages the two halves of each batch: the same gradient as one host
    assert abs(model["metrics"]["val_accuracy"] - baseline["metrics"]["val_accuracy"]) <= 0.02
    assert model["metrics"]["val_accuracy"] >= 0.9
    assert "name clash" not in proc.stderr  # only rank 0 writes the model
    assert leftovers(docker_client, "fid-ddp") == []


#: Small batches for the spot test: 60 epochs take ≈0.03 s each with the default batch size, so the whole
#: training (≈2 s) is shorter than the run-to-run spread of the container's start and imports (≈1 s); at 8 rows a
#: batch it takes ≈15 s and the interruption, timed from the container's start, lands mid-training.
SPOT_ARGS = ("-H", "batch-size=8")


@pytest.fixture(scope="module")
def spot_baseline(default_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run with the spot test's hyperparameters."""
    work = tmp_path_factory.mktemp("spot-baseline")
    proc = smbyoc("local-train", *example_args(default_images["train"]), *SPOT_ARGS, "--job-name", "fid-spot-base",
                  "-o", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    model = model_json(work / "out", "fid-spot-base")
    model["mid_seconds"] = seconds_to_epoch(proc.stdout, EPOCHS // 2)
    return model


def test_default_example_resumes_after_spot_interruption(default_images: dict[str, str], spot_baseline: dict,
                                                         docker_client: Any, tmp_path: Path) -> None:
    baseline = spot_baseline
    ckpt = tmp_path / "ckpt"
    proc = smbyoc("local-train", *example_args(default_images["train"]), *SPOT_ARGS, "--checkpoint-s3-dir",
                  str(ckpt), "--spot-interruption-after", f"{baseline['mid_seconds']:.1f}", "--job-name",
                  "fid-spot-ex", "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = describe(proc)
    assert result["InterruptionCount"] == 1
    resumed = [line for line in proc.stderr.splitlines() if "resumed from epoch" in line]
    assert len(resumed) == 1, proc.stderr
    resumed_epoch = int(resumed[0].split("resumed from epoch ")[1].split()[0])
    assert 0 < resumed_epoch < EPOCHS
    model = model_json(tmp_path / "out", "fid-spot-ex")
    assert model["epochs_completed"] == baseline["epochs_completed"] == EPOCHS
    assert model["metrics"]["val_accuracy"] == pytest.approx(baseline["metrics"]["val_accuracy"], abs=1e-6)
    assert sorted(p.name for p in ckpt.iterdir())[-1] == f"checkpoint-epoch-{EPOCHS:04d}.pt"


def test_network_isolation_refuses_requirements_install_with_the_runtime_error(
        default_images: dict[str, str], docker_client: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('never reached')\n")
    (src / "requirements.txt").write_text("some-package==1.0\n")
    proc = smbyoc("local-train", "--image", default_images["train"], "-e", "train.py", "-s", str(src),
                  "--network-isolation", "--job-name", "fid-iso-req", "-o", "out", "--json", cwd=tmp_path)
    assert proc.returncode != 0
    result = describe(proc)
    assert result["TrainingJobStatus"] == "Failed"
    assert "SMBYOC_ALLOW_REQUIREMENTS_INSTALL=false" in result["FailureReason"]
    assert "requirements.txt" in result["FailureReason"]
    assert "never reached" not in proc.stdout + proc.stderr
