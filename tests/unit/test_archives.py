import io
import tarfile

import pytest

from smbyoc.archives import create_tar_gz, is_tar_archive, safe_extract
from smbyoc.errors import ArchiveError


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
