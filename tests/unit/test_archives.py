import io
import os
import shutil
import stat
import tarfile

import pytest

from smbyoc.archives import ExtractLimits, create_tar_gz, is_tar_archive, safe_extract
from smbyoc.archives.extract import _write_all
from smbyoc.errors import ArchiveError, EnvVarError


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_extracts_a_normal_archive(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [file_member("model.onnx", b"abc"), file_member("code/inference.py"),
                                                 link_member("latest", "model.onnx")])
    names = safe_extract(archive, tmp_path / "out")
    assert sorted(names) == ["code/inference.py", "latest", "model.onnx"]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"abc"
    assert (tmp_path / "out" / "latest").resolve() == (tmp_path / "out" / "model.onnx").resolve()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file_member("/etc/passwd"), "absolute path"),
        (file_member("../evil"), r"leaves the target directory"),
        (file_member("a/../../evil"), r"leaves the target directory"),
        (link_member("l", "/etc/passwd"), "link to the absolute path"),
        (link_member("sub/l", "../../outside"), "outside the target directory"),
        (link_member("h", "../x", tarfile.LNKTYPE), "outside the target directory"),
    ],
)
def test_rejects_unsafe_members_before_writing_anything(tmp_path, member, message):
    archive = make_tar(tmp_path / "bad.tar.gz", [file_member("ok.txt"), member])
    with pytest.raises(ArchiveError, match=message) as info:
        safe_extract(archive, tmp_path / "out")
    assert "bad.tar.gz: member" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_rejects_devices(tmp_path):
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    archive = make_tar(tmp_path / "d.tar.gz", [(info, None)])
    with pytest.raises(ArchiveError, match="device"):
        safe_extract(archive, tmp_path / "out")


def test_unreadable_archive_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(ArchiveError, match="model.tar.gz: cannot read archive"):
        safe_extract(bad, tmp_path / "out")
    assert not is_tar_archive(bad)


def test_create_round_trip_and_uncompressed(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("1")
    (src / "top").write_text("2")
    gz = create_tar_gz(src, tmp_path / "a.tar.gz")
    plain = create_tar_gz(src, tmp_path / "a.tar", compress=False)
    for archive in (gz, plain):
        with tarfile.open(archive) as tar:
            assert sorted(tar.getnames()) == ["d", "d/f", "top"]
    with open(gz, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    with open(plain, "rb") as f:
        assert f.read(2) != b"\x1f\x8b"


def test_create_from_missing_dir_gives_empty_archive(tmp_path):
    archive = create_tar_gz(tmp_path / "nope", tmp_path / "e.tar.gz")
    with tarfile.open(archive) as tar:
        assert tar.getnames() == []


# ------------------------------------------------------------------------------ extraction details

def test_dot_root_entry_modes_owners_and_hard_links(tmp_path):
    src = tmp_path / "src"
    (src / "code").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    os.link(src / "model.pt", src / "same.pt")
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")  # what `tar -C src -czf m.tar.gz .` produces: ".", "./code", ...
        info, data = file_member("./code/run.sh", b"#!/bin/sh\n")
        info.mode, info.uid, info.gid = 0o6777, 12345, 12345  # setuid, setgid, world-writable
        tar.addfile(info, io.BytesIO(data))
        info, data = file_member("./plain", b"x")
        info.mode = 0o666
        tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    safe_extract(archive, out)
    run = (out / "code" / "run.sh").stat()
    assert stat.S_IMODE(run.st_mode) == 0o755 and run.st_uid == os.getuid()
    assert stat.S_IMODE((out / "plain").stat().st_mode) == 0o644
    assert (out / "same.pt").stat().st_ino == (out / "model.pt").stat().st_ino
    assert (out / "model.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.gz", "out", "src"]  # no staging left


def test_link_chains_inside_the_tree_are_kept(tmp_path):
    archive = make_tar(tmp_path / "m.tar.gz", [
        file_member("v2/model.onnx", b"abc"), link_member("current", "v2"), link_member("latest", "current"),
        link_member("v2/self", "../v2/model.onnx"),
    ])
    out = tmp_path / "out"
    safe_extract(archive, out)
    assert (out / "latest" / "model.onnx").read_bytes() == b"abc"
    assert os.readlink(out / "latest") == "current"
    assert (out / "v2" / "self").read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([link_member("l", "")], "empty target"),
        ([file_member("a"), file_member("a/b")], "is under 'a', which is not a directory"),
        ([link_member("a", "x"), file_member("a")], "appears twice"),
        ([link_member("h", "later", tarfile.LNKTYPE), file_member("later")], "not an earlier file member"),
        ([(tarfile.TarInfo("."), b"")], "names the target directory itself"),
    ],
)
def test_more_refusals(tmp_path, members, message):
    archive = make_tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sparse_members_are_refused(tmp_path):
    info = tarfile.TarInfo("holes")
    info.type = tarfile.GNUTYPE_SPARSE
    archive = tmp_path / "s.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="s.tar: member 'holes' is a sparse file"):
        safe_extract(archive, tmp_path / "out")


def test_extracting_into_an_existing_directory_replaces_links_instead_of_following_them(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    (dest / "code").symlink_to(outside)
    (dest / "old").symlink_to(outside / "victim")
    archive = make_tar(tmp_path / "m.tar.gz", [file_member("code/inference.py", b"new"), file_member("old", b"o")])
    safe_extract(archive, dest)
    assert not (dest / "code").is_symlink() and (dest / "code" / "inference.py").read_bytes() == b"new"
    assert not (dest / "old").is_symlink() and (dest / "old").read_bytes() == b"o"
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in dest.iterdir()) == ["code", "keep.txt", "old"]


def test_a_file_cannot_replace_an_existing_directory(tmp_path):
    dest = tmp_path / "model"
    (dest / "code").mkdir(parents=True)
    archive = make_tar(tmp_path / "m.tar.gz", [file_member("a.txt"), file_member("code", b"not a dir")])
    with pytest.raises(ArchiveError, match="cannot replace the directory .*code with a file"):
        safe_extract(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["code"]


def test_a_failure_while_writing_leaves_the_destination_as_it_was(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    archive = make_tar(tmp_path / "m.tar.gz", [file_member("a.bin", b"a" * 1000), file_member("x" * 300)])
    with pytest.raises(ArchiveError, match=r"m.tar.gz: member 'x+' cannot be extracted: File name too long"):
        safe_extract(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    fresh = tmp_path / "fresh"
    with pytest.raises(ArchiveError):
        safe_extract(archive, fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.gz", "model"]


# ----------------------------------------------------------------------------------------- limits

def test_member_count_limit_from_the_environment(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "many.tar.gz", [file_member(f"f{i}") for i in range(11)])
    monkeypatch.setenv("SMBYOC_ARCHIVE_MAX_MEMBERS", "10")
    with pytest.raises(ArchiveError, match=r"many.tar.gz: more than 10 members, the limit set by "
                                           r"SMBYOC_ARCHIVE_MAX_MEMBERS"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("SMBYOC_ARCHIVE_MAX_MEMBERS", "11")
    assert len(safe_extract(archive, tmp_path / "out")) == 11
    monkeypatch.setenv("SMBYOC_ARCHIVE_MAX_MEMBERS", "ten")
    with pytest.raises(EnvVarError, match="SMBYOC_ARCHIVE_MAX_MEMBERS"):
        safe_extract(archive, tmp_path / "out2")


def test_byte_limit_counts_declared_sizes_before_writing(tmp_path):
    archive = make_tar(tmp_path / "big.tar.gz", [file_member("a", b"a" * 600), file_member("b", b"b" * 600)])
    with pytest.raises(ArchiveError, match=r"big.tar.gz: members declare more than 1000 bytes, the limit set by "
                                           r"SMBYOC_ARCHIVE_MAX_BYTES"):
        safe_extract(archive, tmp_path / "out", environ={"SMBYOC_ARCHIVE_MAX_BYTES": "1000"})
    assert not (tmp_path / "out").exists()
    safe_extract(archive, tmp_path / "out", environ={"SMBYOC_ARCHIVE_MAX_BYTES": "1200"})
    assert (tmp_path / "out" / "b").stat().st_size == 600


def test_byte_limit_is_also_enforced_on_the_bytes_written(tmp_path):
    archive = make_tar(tmp_path / "big.tar.gz", [file_member("a", b"a" * 600), file_member("b", b"b" * 600)])
    with tarfile.open(archive) as tar:
        entries = [(m, (m.name,), "file") for m in tar.getmembers()]
        root = tmp_path / "root"
        root.mkdir()
        with pytest.raises(ArchiveError, match=r"member 'b' takes the archive past 1000 bytes"):
            _write_all(tar, entries, str(root), archive, ExtractLimits(max_bytes=1000, max_members=10))


def test_a_header_declaring_a_huge_file_is_refused_without_reading_data(tmp_path):
    info = tarfile.TarInfo("bomb")
    info.size = 10**14  # 100 TB; the data is not even there (reading on would fail differently)
    archive = tmp_path / "bomb.tar"
    archive.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 512)
    with pytest.raises(ArchiveError, match="bomb.tar: members declare more than 100.0 GiB, the limit"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_declared_sizes_must_fit_in_the_free_space(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "m.tar.gz", [file_member("a", b"a" * 600)])
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=500))
    with pytest.raises(ArchiveError, match=r"m.tar.gz: members declare 600 bytes but only 500 bytes are free in "):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_many_directories_and_hard_links_across_them(tmp_path):
    members = [file_member(f"d{i:03d}/f", str(i).encode()) for i in range(150)]  # more dirs than are kept open
    members += [link_member(f"d{i:03d}/h", f"d{149 - i:03d}/f", tarfile.LNKTYPE) for i in range(150)]
    archive = make_tar(tmp_path / "m.tar.gz", members)
    out = tmp_path / "out"
    assert len(safe_extract(archive, out)) == 300
    for i in range(150):
        assert (out / f"d{i:03d}" / "h").read_bytes() == str(149 - i).encode()
        assert (out / f"d{i:03d}" / "h").stat().st_ino == (out / f"d{149 - i:03d}" / "f").stat().st_ino
