"""The S3 download cache: temporary name then rename, trees built once even when runs race, leftovers of dead
processes removed, older ETag versions dropped once stale."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smbyoc.errors import ConfigError
from smbyoc.s3.cache import STALE_VERSION_SECONDS, S3Cache, cache_root


def test_root_follows_smbyoc_cache_dir(tmp_path: Path) -> None:
    assert cache_root({"SMBYOC_CACHE_DIR": str(tmp_path)}) == tmp_path / "s3"
    assert cache_root({}) == Path.home() / ".cache" / "smbyoc" / "s3"


def test_object_paths_keep_the_name_and_change_with_the_etag(tmp_path: Path) -> None:
    cache = S3Cache(tmp_path)
    a = cache.object_path("aws", "bucket", "data/train.csv", "etag-1")
    b = cache.object_path("aws", "bucket", "data/train.csv", "etag-2")
    c = cache.object_path("http://127.0.0.1:9000", "bucket", "data/train.csv", "etag-1")
    assert a.name == b.name == "train.csv"
    assert a.parent.parent == b.parent.parent and a != b  # same object, another version
    assert a.parent.parent != c.parent.parent  # another store


def test_commit_renames_a_finished_file_only(tmp_path: Path) -> None:
    cache = S3Cache(tmp_path)
    final = cache.object_path("aws", "bucket", "k/model.tar.gz", "e1")
    tmp = cache.temp_path()
    assert tmp.parent == tmp_path / "tmp" and not tmp.exists()
    tmp.write_bytes(b"half")
    assert not final.exists()  # nothing at the final name while it is being written
    assert cache.commit_file(tmp, final) == final
    assert final.read_bytes() == b"half" and not tmp.exists()


def test_stale_versions_are_dropped_fresh_ones_kept(tmp_path: Path) -> None:
    cache = S3Cache(tmp_path)
    old = cache.object_path("aws", "bucket", "k", "old")
    recent = cache.object_path("aws", "bucket", "k", "recent")
    for path in (old, recent):
        path.parent.mkdir(parents=True)
        path.write_text("x")
    long_ago = time.time() - STALE_VERSION_SECONDS - 60
    os.utime(old.parent, (long_ago, long_ago))
    tmp = cache.temp_path()
    tmp.write_text("new")
    cache.commit_file(tmp, cache.object_path("aws", "bucket", "k", "new"))
    assert not old.parent.exists()
    assert recent.exists()


def _build_tree(root: str, final: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    cache = S3Cache(Path(root))

    def build(tmp: Path) -> None:
        (tmp / "sub").mkdir()
        for i in range(20):
            (tmp / "sub" / f"{i}.txt").write_text(str(i))
            time.sleep(0.005)

    results.put(str(cache.store_tree(Path(final), build)))


def test_racing_runs_build_one_complete_tree(tmp_path: Path) -> None:
    cache = S3Cache(tmp_path)
    final = cache.tree_path("aws", "prefix", "s3://bucket/p/")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_build_tree, args=(str(tmp_path), str(final), results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert {results.get(timeout=5) for _ in procs} == {str(final)}
    assert sorted(p.name for p in (final / "sub").iterdir()) == sorted(f"{i}.txt" for i in range(20))
    assert list((tmp_path / "tmp").iterdir()) == []  # the losers' trees are gone


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = S3Cache(tmp_path)
    final = cache.tree_path("x")

    def build(tmp: Path) -> None:
        (tmp / "a").write_text("a")
        raise OSError(28, "No space left on device")

    with pytest.raises(ConfigError, match="cannot write the S3 cache: No space left on device"):
        cache.store_tree(final, build)
    assert not final.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_leftovers_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)
    tmp = tmp_path / "tmp"
    (tmp / f"{pid}-abc").mkdir(parents=True)
    (tmp / f"{pid}-abc" / "part").write_text("x")
    (tmp / f"{pid}-def").write_text("x")
    alive = tmp / f"{os.getppid()}-ghi"
    alive.write_text("still being written")
    S3Cache(tmp_path).temp_path()
    assert sorted(p.name for p in tmp.iterdir()) == [alive.name]
