"""Pure parts of the training emulator's fidelity features: manifests, sharding, the Pipe feeder (real
FIFOs and a reader thread), checkpoint sync, the status line, and one-line refusals of bad input."""

from __future__ import annotations

import gzip
import io
import json
import threading
from pathlib import Path

import pytest

from smbyoc.cli.status_line import StatusDisplay
from smbyoc.emulator.checkpoint_sync import CheckpointSync
from smbyoc.emulator.job_spec import ChannelSpec, TrainingJobSpec
from smbyoc.emulator.layout import channel_objects
from smbyoc.emulator.manifest import read_manifest
from smbyoc.emulator.pipe_feeder import PipeFeeder, PipeSource
from smbyoc.errors import ConfigError
from smbyoc.paths import Paths
from smbyoc.training.pipe import PipeChannel, read_recordio


def files(root: Path, names: dict[str, bytes]) -> Path:
    for name, data in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_manifest_lists_the_named_objects_in_order(tmp_path: Path) -> None:
    files(tmp_path / "d", {"a.txt": b"a", "sub/b.txt": b"b", "c.txt": b"c"})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"prefix": "d/"}, "sub/b.txt", "a.txt"]))
    assert [e.key for e in read_manifest(manifest)] == ["sub/b.txt", "a.txt"]
    channel = ChannelSpec("train", manifest, data_type="ManifestFile", distribution="ShardedByS3Key")
    assert [k for k, _ in channel_objects(channel, 1, 2)] == ["a.txt"]


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not a JSON manifest"),
    ('["a"]', 'starting with {"prefix"'),
    ('[{"prefix": "d/"}, "../etc/passwd"]', "relative key"),
    ('[{"prefix": "d/"}, "missing.txt"]', "no such file"),
    ('[{"prefix": "s3://bucket/x/"}, "a"]', "not s3://"),
])
def test_bad_manifest_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "d").mkdir()
    manifest = tmp_path / "m.json"
    manifest.write_text(content)
    with pytest.raises(ConfigError, match="m.json") as info:
        read_manifest(manifest)
    assert message in str(info.value)


def test_sharding_by_sorted_key_covers_every_object_once(tmp_path: Path) -> None:
    root = files(tmp_path / "d", {f"k{i}": b"x" for i in range(10)})
    channel = ChannelSpec("train", root, distribution="ShardedByS3Key")
    shards = [[k for k, _ in channel_objects(channel, i, 3)] for i in range(3)]
    assert shards[0] == ["k0", "k3", "k6", "k9"]
    assert sorted(sum(shards, [])) == sorted(f"k{i}" for i in range(10))


def feed_and_read(tmp_path: Path, source: PipeSource, epochs: int, wrapper: str = "None") -> list[bytes]:
    data_dir = tmp_path / "input" / "data"
    feeder = PipeFeeder(source, data_dir).start()
    try:
        channel = PipeChannel(Paths(tmp_path), source.channel, timeout=10)
        return [stream.read() for _, stream in channel.epochs(count=epochs)]
    finally:
        feeder.stop()


def test_pipe_feeder_streams_each_epoch_in_key_order(tmp_path: Path) -> None:
    root = files(tmp_path / "src", {"b": b"B" * 3, "a": b"A" * (3 << 20)})
    source = PipeSource("train", tuple(p for _, p in channel_objects(ChannelSpec("train", root))))
    got = feed_and_read(tmp_path, source, 3)
    assert got == [b"A" * (3 << 20) + b"BBB"] * 3
    assert not list((tmp_path / "input" / "data").glob("train_*"))  # FIFOs removed when the job ends


def test_pipe_feeder_gzip_and_recordio(tmp_path: Path) -> None:
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "1.gz").write_bytes(gzip.compress(b"first"))
    (tmp_path / "z" / "2.gz").write_bytes(gzip.compress(b"second!"))
    source = PipeSource("train", (tmp_path / "z" / "1.gz", tmp_path / "z" / "2.gz"), "RecordIO", "Gzip")
    (epoch0,) = feed_and_read(tmp_path, source, 1)
    assert list(read_recordio(io.BytesIO(epoch0))) == [b"first", b"second!"]


def test_pipe_reader_closing_early_ends_the_epoch(tmp_path: Path) -> None:
    root = files(tmp_path / "src", {"big": b"x" * (8 << 20)})
    data_dir = tmp_path / "input" / "data"
    feeder = PipeFeeder(PipeSource("t", (root / "big",)), data_dir).start()
    try:
        channel = PipeChannel(Paths(tmp_path), "t", timeout=10)
        with channel.open_epoch(0) as stream:
            assert stream.read(10) == b"x" * 10
        with channel.open_epoch(1) as stream:
            assert len(stream.read()) == 8 << 20
    finally:
        feeder.stop()
    assert feeder.error is None


def test_checkpoint_sync_copies_in_mirrors_out_and_deletes(tmp_path: Path) -> None:
    remote = files(tmp_path / "remote", {"old.pt": b"old"})
    local = tmp_path / "host" / "checkpoints"
    sync = CheckpointSync(remote, [("algo-1", local)])
    assert sync.start_job() == 1 and (local / "old.pt").read_bytes() == b"old"
    (local / "new.pt").write_bytes(b"new")
    (local / "old.pt").unlink()
    assert sync.sync() == 2
    assert sorted(p.name for p in remote.iterdir()) == ["new.pt"]
    (local / "new.pt").write_bytes(b"newer!")
    sync.start()
    sync.finish()
    assert (remote / "new.pt").read_bytes() == b"newer!"


def test_status_line_shows_job_hosts_elapsed_and_transitions() -> None:
    err, out = io.StringIO(), io.StringIO()
    now = [100.0]
    display = StatusDisplay("job", 2, err=err, out=out, live=False, clock=lambda: now[0])
    for state in ("Starting", "Downloading", "Training"):
        display.on_status("InProgress", state)
    now[0] += 65
    assert display.line() == "job | 2 hosts | 01:05 | Starting → Downloading → Training"
    display.log_line("algo-2", "hello")
    assert out.getvalue() == "[algo-2] hello\n"
    assert err.getvalue().splitlines()[-1] == "[job] Training (00:00)"


def test_spec_refuses_bad_lifecycle_values(tmp_path: Path) -> None:
    base = {"job_name": "j", "hyperparameters": {}}
    for kwargs, culprit in (({"max_runtime_seconds": 0.5}, "--max-runtime"),
                            ({"spot_interruption_after": -1.0}, "--spot-interruption-after"),
                            ({"gpus": -2}, "--gpus"), ({"instance_count": 0}, "instance count")):
        with pytest.raises(ConfigError, match=culprit):
            TrainingJobSpec(**base, **kwargs).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "culprit"), [
    (["--instance-type", "ml.bogus.huge"], "instance type 'ml.bogus.huge'"),
    (["--instance-count", "0"], "instance count 0"),
    (["--input-mode", "nope=Pipe"], "--input-mode nope=Pipe: no such channel"),
    (["--distribution", "nope=ShardedByS3Key"], "--distribution nope=ShardedByS3Key: no such channel"),
    (["--input-mode", "train=FastFile", "--s3-data-type", "train=ManifestFile"], "FastFile"),
    (["--compression", "train=Gzip"], "only in Pipe input mode"),
    (["--max-runtime", "-5"], "--max-runtime -5"),
    (["--spot-interruption-after", "-1"], "--spot-interruption-after -1"),
    (["--distribution", "Sharded"], "--distribution job=Sharded: expected one of"),
    (["-o", "/proc/smbyoc-no"], "--output-dir /proc/smbyoc-no: cannot create directories in /proc"),
    (["-o", "data/m.json"], "m.json is not a directory"),  # (said before training, not after)
])
def test_bad_input_is_one_line_before_anything_starts(tmp_path: Path, args: list[str], culprit: str) -> None:
    import subprocess
    import sys

    data = files(tmp_path / "data", {"m.json": b'[{"prefix": "."}, "m.json"]'})
    proc = subprocess.run([sys.executable, "-m", "smbyoc.cli", "local-train", "--mode", "process",
                           "--train-command", "true", "-c", f"train={data / 'm.json'}", "-o", "out", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and culprit in errors[0], proc.stderr
    assert "Training job" not in proc.stderr and not (tmp_path / "out").exists()


def test_process_mode_pipe_channel_end_to_end(tmp_path: Path) -> None:
    """Pipe mode in process mode: the same FIFOs in the SAGEMAKER_BASE_DIR tree."""
    import sys

    from smbyoc.emulator.process_backend import ProcessBackend
    from smbyoc.emulator.training_job import run_training_job

    data = files(tmp_path / "data", {"a": b"abc", "b": b"def"})
    program = tmp_path / "reader.py"
    program.write_text(
        "import os, pathlib\n"
        "from smbyoc.paths import Paths\n"
        "from smbyoc.training.pipe import PipeChannel\n"
        "p = Paths.from_env()\n"
        "got = [s.read().decode() for _, s in PipeChannel(p, 'train', timeout=10).epochs(count=2)]\n"
        "(p.model_dir / 'got.txt').write_text(','.join(got))\n")
    spec = TrainingJobSpec(job_name="pipe-proc", hyperparameters={},
                           channels=(ChannelSpec("train", data, input_mode="Pipe"),))
    result = run_training_job(spec, ProcessBackend(command=[sys.executable, str(program)]), tmp_path / "out")
    assert result.succeeded, result.failure_reason
    import tarfile

    with tarfile.open(result.artifacts.model.path) as tar:  # type: ignore[union-attr]
        assert tar.extractfile("got.txt").read() == b"abcdef,abcdef"  # type: ignore[union-attr]
    assert threading.active_count() < 10


def test_a_stop_made_as_the_job_starts_is_kept(tmp_path: Path) -> None:
    """Ctrl-C between the job's start and the program's: the stop is not lost when the backend starts running."""
    import sys
    import time

    from smbyoc.emulator.process_backend import ProcessBackend
    from smbyoc.emulator.training_job import run_training_job

    program = tmp_path / "long.py"
    program.write_text("import pathlib, time\n"
                       "from smbyoc.paths import Paths\n"
                       "time.sleep(30)\n"
                       "(Paths.from_env().model_dir / 'trained').write_text('yes')\n")
    backend = ProcessBackend(command=[sys.executable, str(program)])
    backend.stop()  # what the signal handler does when Ctrl-C comes as the job reaches Training
    started = time.monotonic()
    result = run_training_job(TrainingJobSpec(job_name="stop-at-start", hyperparameters={}), backend,
                              tmp_path / "out")
    assert time.monotonic() - started < 15  # not the program's 30 s
    assert not (tmp_path / "out" / "stop-at-start" / "output" / "model" / "trained").exists()
    assert not backend._stopping.is_set()  # cleared at the end: the backend runs again (a spot restart)
    assert not result.succeeded


@pytest.mark.parametrize(
    "payload", [b"", b"abc", b"abcd" * 100, b"\x0a\x23\xd7\xce" + b"xyzw" * 3, b"x\x0a\x23\xd7\xce"])
def test_fast_recordio_framing_matches_the_runtime_encoder(payload: bytes) -> None:
    from smbyoc.emulator.pipe_feeder import frame_recordio
    from smbyoc.training.pipe import encode_recordio

    assert b"".join(frame_recordio(payload)) == encode_recordio(payload)
