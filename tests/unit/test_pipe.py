"""Pipe-mode reader with real FIFOs and a writer thread; RecordIO framing."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time

import pytest

from smbyoc.errors import ConfigError
from smbyoc.paths import Paths
from smbyoc.training.env import TrainingEnv
from smbyoc.training.pipe import (
    RECORDIO_MAGIC,
    PipeChannel,
    PipeWaitTimeout,
    RecordIOError,
    encode_recordio,
    read_recordio,
)

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


def _writer(path, chunks, delay=0.0, make=True):
    def run():
        time.sleep(delay)
        if make:
            os.mkfifo(path)
        with open(path, "wb") as f:  # blocks until the reader opens
            for chunk in chunks:
                f.write(chunk)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_epochs_wait_for_fifos_that_appear_later(tmp_path):
    paths = Paths(tmp_path)
    paths.input_data_dir.mkdir(parents=True)
    writers = [_writer(paths.pipe_path("train", e), [f"epoch {e} ".encode() * 1000], delay=0.2 * e)
               for e in range(3)]
    channel = PipeChannel(paths, "train", timeout=10, poll_interval=0.01)
    seen = [(epoch, stream.read()) for epoch, stream in channel.epochs(count=3)]
    assert [e for e, _ in seen] == [0, 1, 2]
    assert all(data == f"epoch {e} ".encode() * 1000 for e, data in seen)
    for w in writers:
        w.join(5)


def test_open_epoch_times_out_naming_the_fifo(tmp_path):
    channel = PipeChannel(Paths(tmp_path), "train", timeout=0.2, poll_interval=0.02)
    start = time.monotonic()
    with pytest.raises(PipeWaitTimeout, match="train_0.*SMBYOC_PIPE_WAIT_TIMEOUT") as info:
        channel.open_epoch(0)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 5


def test_unbounded_epochs_end_when_no_further_fifo(tmp_path):
    paths = Paths(tmp_path)
    paths.input_data_dir.mkdir(parents=True)
    w = _writer(paths.pipe_path("train", 0), [b"only"])
    channel = PipeChannel(paths, "train", timeout=0.3, poll_interval=0.02)
    assert [stream.read() for _, stream in channel.epochs()] == [b"only"]
    w.join(5)


def test_timeout_from_environment(tmp_path):
    channel = PipeChannel(Paths(tmp_path), "train", environ={"SMBYOC_PIPE_WAIT_TIMEOUT": "0.05"})
    assert channel.timeout == 0.05


def test_recordio_roundtrip_through_a_fifo(tmp_path):
    paths = Paths(tmp_path)
    paths.input_data_dir.mkdir(parents=True)
    payloads = [b"", b"a", b"abcd", b"xyz" * 3, b"\0" * 100, MAGIC + b"tail", b"ab" + MAGIC + b"cd",
                b"1234" + MAGIC + b"5678" + MAGIC, os.urandom(100_000)]
    w = _writer(paths.pipe_path("train", 0), [encode_recordio(p) for p in payloads])
    assert list(PipeChannel(paths, "train", timeout=5).records(0)) == payloads
    w.join(5)


def test_recordio_framing_matches_dmlc():
    assert encode_recordio(b"abcde") == MAGIC + struct.pack("<I", 5) + b"abcde\0\0\0"
    # aligned magic inside the payload splits it: flag 1 part, then flag 3 part
    framed = encode_recordio(b"1234" + MAGIC + b"56")
    assert framed == (MAGIC + struct.pack("<I", (1 << 29) | 4) + b"1234"
                      + MAGIC + struct.pack("<I", (3 << 29) | 2) + b"56\0\0")


def test_recordio_errors():
    with pytest.raises(RecordIOError, match="bad RecordIO magic"):
        list(read_recordio(io.BytesIO(b"\0" * 8)))
    with pytest.raises(RecordIOError, match="truncated"):
        list(read_recordio(io.BytesIO(MAGIC + struct.pack("<I", 10) + b"abc")))
    with pytest.raises(RecordIOError, match="truncated header"):
        list(read_recordio(io.BytesIO(MAGIC)))
    with pytest.raises(RecordIOError, match="multi-part"):
        list(read_recordio(io.BytesIO(MAGIC + struct.pack("<I", (1 << 29) | 0))))


def _env(tmp_path, mode):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {
        "TrainingInputMode": mode, "S3DistributionType": "FullyReplicated", "RecordWrapperType": "RecordIO"}}))
    return TrainingEnv.from_env({}, tmp_path, detect_devices=False)


def test_channel_checked_against_the_training_env(tmp_path):
    env = _env(tmp_path, "Pipe")
    channel = PipeChannel(env, "train", timeout=1)
    assert channel.record_wrapper_type == "RecordIO"
    assert channel.fifo_path(1) == tmp_path / "input" / "data" / "train_1"
    with pytest.raises(ConfigError, match="no such channel.*train"):
        PipeChannel(env, "validation")


def test_file_mode_channel_refused(tmp_path):
    with pytest.raises(ConfigError, match="not 'Pipe'"):
        PipeChannel(_env(tmp_path, "File"), "train")
