"""Packing trees written by a training image: links are never followed out of the tree; under sudo the
artifacts go back to the invoking user."""

from __future__ import annotations

import gzip
import logging
import os
import tarfile

import pytest

from smbyoc.archives import create_tar_gz, safe_extract
from smbyoc.emulator.artifacts import collect, merge_dirs

SECRET = b"CANARY-SECRET-4f1c9e"


@pytest.fixture
def outside(tmp_path):
    """A secret file and a directory outside every tree."""
    root = tmp_path / "host-files"
    (root / "dir").mkdir(parents=True)
    (root / "shadow").write_bytes(SECRET)
    (root / "dir" / "id_rsa").write_bytes(SECRET)
    return root


def hostile_tree(tree, outside):
    (tree / "sub").mkdir(parents=True)
    (tree / "model.pt").write_bytes(b"weights")
    (tree / "sub" / "file").write_bytes(b"inner")
    (tree / "latest").symlink_to("model.pt")  # internal, kept as is
    (tree / "alias").symlink_to("sub")  # internal link to a directory, kept as a link
    (tree / "via").symlink_to("alias/file")  # through an internal link: stored as sub/file
    (tree / "shadow").symlink_to(outside / "shadow")  # absolute, to a file
    (tree / "etc").symlink_to(outside / "dir")  # absolute, to a directory
    rel = os.path.relpath(outside / "shadow", tree / "sub")
    (tree / "sub" / "rel").symlink_to(rel)  # relative, leaves the tree
    (tree / "hop").symlink_to("sub/rel")  # inside lexically, resolves outside
    (tree / "up").symlink_to("sub/../..")  # leaves lexically
    return tree


LEFT_OUT = ["etc", "hop", "shadow", "sub/rel", "up"]


def members(archive):
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def assert_no_secret(archive):
    with open(archive, "rb") as f:
        raw = f.read()
    assert SECRET not in (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def test_links_leaving_the_tree_are_left_out_with_one_warning(tmp_path, outside, caplog):
    tree = hostile_tree(tmp_path / "model", outside)
    caplog.set_level(logging.WARNING, logger="smbyoc")
    archive = create_tar_gz(tree, tmp_path / "model.tar.gz")
    found = members(archive)
    assert sorted(found) == ["alias", "latest", "model.pt", "sub", "sub/file", "via"]
    assert found["latest"].issym() and found["latest"].linkname == "model.pt"
    assert found["alias"].issym() and found["alias"].linkname == "sub"
    assert found["via"].issym() and found["via"].linkname == "sub/file"
    assert_no_secret(archive)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "left out 5 entries" in warnings[0].getMessage()
    for name in LEFT_OUT:
        assert name in warnings[0].getMessage()
    # What we pack, we can extract.
    out = tmp_path / "out"
    safe_extract(archive, out)
    assert (out / "via").read_bytes() == b"inner" and (out / "latest").read_bytes() == b"weights"


def test_a_model_dir_that_is_itself_a_link_packs_nothing(tmp_path, outside):
    host = tmp_path / "algo-1"
    host.mkdir()
    (host / "model").symlink_to(outside / "dir")
    (host / "output").symlink_to(outside)  # output/data would be host-files/data
    (outside / "data").mkdir()
    (outside / "data" / "leak").write_bytes(SECRET)
    arts = collect([("algo-1", host)], tmp_path / "out", "job")
    assert members(arts.model.path) == {} and members(arts.output.path) == {}
    assert_no_secret(arts.model.path)
    assert_no_secret(arts.output.path)


def test_collect_and_merge_never_follow_links_out(tmp_path, outside, caplog):
    caplog.set_level(logging.WARNING, logger="smbyoc")
    hosts = []
    for name in ("algo-1", "algo-2"):
        host = tmp_path / name
        hostile_tree(host / "model", outside)
        (host / "output" / "data").mkdir(parents=True)
        (host / "output" / "data" / "leak").symlink_to(outside / "shadow")
        (host / "output" / "data" / f"{name}.json").write_text("{}")
        hosts.append((name, host))
    single = collect(hosts[:1], tmp_path / "out1", "job")
    multi = collect(hosts, tmp_path / "out2", "job")
    for arts in (single, multi):
        assert sorted(members(arts.model.path)) == ["alias", "latest", "model.pt", "sub", "sub/file", "via"]
        assert_no_secret(arts.model.path)
        assert_no_secret(arts.output.path)
        assert members(arts.model.path)["latest"].issym()
    assert sorted(members(multi.output.path)) == ["algo-1.json", "algo-2.json"]
    assert "latest (written by algo-1 and algo-2)" in multi.clashes


def test_merge_does_not_write_through_another_hosts_link(tmp_path):
    a = tmp_path / "a"
    (a / "real").mkdir(parents=True)
    (a / "sub").symlink_to("real")
    b = tmp_path / "b"
    (b / "sub").mkdir(parents=True)
    (b / "sub" / "f").write_text("b")
    clashes = merge_dirs([("algo-1", a), ("algo-2", b)], tmp_path / "merged")
    assert clashes == ["sub (written by algo-1 and algo-2)"]
    assert (tmp_path / "merged" / "sub").is_symlink()
    assert list((tmp_path / "merged" / "real").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give files away")
def test_under_sudo_the_artifacts_go_back_to_the_caller(tmp_path, monkeypatch):
    host = tmp_path / "algo-1"
    (host / "model").mkdir(parents=True)
    (host / "model" / "m").write_text("m")
    monkeypatch.setenv("SUDO_UID", "4242")
    monkeypatch.setenv("SUDO_GID", "4343")
    arts = collect([("algo-1", host)], tmp_path / "out", "job")
    job = tmp_path / "out" / "job"
    for path in (arts.model.path, arts.output.path, job / "output", job, tmp_path / "out"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (4242, 4343), path
    assert tmp_path.stat().st_uid == 0  # existed before: not ours to give away
    monkeypatch.delenv("SUDO_UID")
    monkeypatch.delenv("SUDO_GID")
    plain = collect([("algo-1", host)], tmp_path / "plain", "job")
    assert plain.model.path.stat().st_uid == 0
