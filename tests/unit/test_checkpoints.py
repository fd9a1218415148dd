"""Checkpoint helpers: directory, latest, atomic save."""

from __future__ import annotations

import os

import pytest

from smbyoc.paths import Paths
from smbyoc.training.checkpoints import checkpoint_dir, latest_checkpoint, save_checkpoint


def test_checkpoint_dir_from_paths_env_and_path(tmp_path, monkeypatch):
    assert checkpoint_dir(Paths(tmp_path)) == tmp_path / "checkpoints"
    assert (tmp_path / "checkpoints").is_dir()

    class Env:
        paths = Paths(tmp_path / "other")

    assert checkpoint_dir(Env()) == tmp_path / "other" / "checkpoints"
    assert checkpoint_dir(tmp_path / "custom") == tmp_path / "custom"
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "fromenv"))
    assert checkpoint_dir() == tmp_path / "fromenv" / "checkpoints"


def test_latest_checkpoint_by_mtime_then_natural_name(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("ckpt-9.pt", "ckpt-10.pt", "ckpt-2.pt"):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(10**18, 10**18))  # same mtime: natural order decides
    (tmp_path / ".smbyoc-ckpt-11.pt.abc.partial").write_bytes(b"half")
    assert latest_checkpoint(tmp_path, "ckpt-*.pt") == tmp_path / "ckpt-10.pt"
    os.utime(tmp_path / "ckpt-2.pt", ns=(2 * 10**18, 2 * 10**18))
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-2.pt"
    assert latest_checkpoint(tmp_path, "*.bin") is None


def test_save_checkpoint_is_atomic(tmp_path):
    target = tmp_path / "ckpt" / "model.bin"
    save_checkpoint(target, lambda f: f.write(b"v1"))
    assert target.read_bytes() == b"v1"

    def broken(f):
        f.write(b"half of v2")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        save_checkpoint(target, broken)
    assert target.read_bytes() == b"v1"  # the old checkpoint is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]  # temp removed
    save_checkpoint(target, lambda f: f.write(b"v2"))
    assert target.read_bytes() == b"v2"
