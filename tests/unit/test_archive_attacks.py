"""Extraction attacks built with tarfile: each must be refused and leave a canary outside untouched.

The same archives are extracted by Debian's /usr/bin/python3 (3.11.2, the serve image's Python, which
has no ``data`` filter) in a subprocess, so the interpreter's patch level truly does not matter.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import smbyoc
from smbyoc.archives import ExtractLimits, safe_extract
from smbyoc.archives.extract import _write_all
from smbyoc.emulator.endpoint import prepare_model_dir
from smbyoc.errors import ArchiveError
from smbyoc.training.code import prepare_code

SRC = Path(smbyoc.__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def add_file(tar, name, data=b"PWNED"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def chain_of_four(tar):
    """``d -> .``, ``e -> d/d/d/..``: lexically inside, really one level up (works on 3.11.2)."""
    add_file(tar, "model.pt", b"ok")
    add_link(tar, "d", ".")
    add_link(tar, "e", "d/d/d/..")
    add_file(tar, "e/canary.txt")


def realpath_overflow(tar):
    """CVE-2025-4517: short links to 247-character directories, 16 deep, so that the real path of
    ``a/b/.../p/lll...`` exceeds PATH_MAX; ``os.path.realpath`` then stops resolving and the data filter
    of 3.11.7 believes ``escape`` (really the parent of the target) is inside."""
    component = "d" * 247
    steps = "abcdefghijklmnop"
    prefix = ""
    for step in steps:
        add_dir(tar, os.path.join(prefix, component))
        add_link(tar, os.path.join(prefix, step), component)
        prefix = os.path.join(prefix, component)
    deep_link = os.path.join(*steps, "l" * 254)
    add_link(tar, deep_link, os.path.join(*[".."] * len(steps)))
    add_link(tar, "escape", deep_link + "/..")
    add_file(tar, "escape/canary.txt")


def write_through_later_link(tar):
    add_file(tar, "x/canary.txt")  # written before the link appears
    add_link(tar, "x", "..")


def link_through_link(tar):
    add_dir(tar, "sub")
    add_link(tar, "up", "sub/..")  # fine on its own
    add_link(tar, "s", "sub")
    add_link(tar, "esc", "s/../..")  # lexically "..": refused anyway
    add_file(tar, "esc/canary.txt")


def hard_link_outside(tar):
    add_link(tar, "h", "../canary.txt", tarfile.LNKTYPE)


def hard_link_to_link(tar):
    add_link(tar, "l", "model.pt")
    add_link(tar, "h", "l", tarfile.LNKTYPE)


ATTACKS = {
    "chain-of-four": (chain_of_four, "member 'e' is a link to 'd/d/d/..', which goes through another link"),
    "cve-2025-4517": (realpath_overflow, "member 'a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/lll"),
    "write-through-later-link": (write_through_later_link, "member 'x/canary.txt' goes through the link 'x'"),
    "link-through-link": (link_through_link, "member 'esc' is a link to 's/../..'"),
    "hard-link-outside": (hard_link_outside, "member 'h' is a link to '../canary.txt', outside"),
    "hard-link-to-link": (hard_link_to_link, "member 'h' is a hard link to 'l', not an earlier file member"),
}


def build(tmp_path, attack, name="evil.tar.gz"):
    """The archive in ``tmp_path/work``, with the canary beside the target ``tmp_path/work/out``."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    canary = work / "canary.txt"
    canary.write_text("ORIGINAL")
    archive = work / name
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        ATTACKS[attack][0](tar)
    return archive, canary, work / "out"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused_and_canary_untouched(tmp_path, attack):
    archive, canary, out = build(tmp_path, attack)
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, out)
    assert str(info.value).startswith(f"{archive}: member ")
    assert ATTACKS[attack][1] in str(info.value)
    assert canary.read_text() == "ORIGINAL"
    assert not out.exists()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["canary.txt", "evil.tar.gz"]


@pytest.mark.parametrize("attack", ["chain-of-four", "cve-2025-4517"])
def test_the_attacks_really_escape_when_links_are_followed(tmp_path, attack):
    """The test archives are potent: a plain extraction that trusts them overwrites the canary."""
    archive, canary, out = build(tmp_path, attack)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(out, filter="fully_trusted")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(out)
    assert canary.read_text() == "PWNED"
    if attack == "cve-2025-4517":
        # The overflow itself: realpath says "inside" for a path that the kernel resolves outside.
        assert os.path.realpath(out / "escape").startswith(str(out) + os.sep)
        assert os.path.samefile(out / "escape", out.parent)


@pytest.mark.parametrize("attack", ["chain-of-four", "cve-2025-4517"])
def test_host_callers_refuse_the_attacks(tmp_path, attack):
    """``local-serve --model-data`` (both modes) and ``sagemaker_submit_directory`` use safe_extract."""
    archive, canary, out = build(tmp_path, attack)
    with pytest.raises(ArchiveError, match="member"):
        prepare_model_dir(archive, out)
    with pytest.raises(ArchiveError, match="member"):
        prepare_code(str(archive), out / "code")
    assert canary.read_text() == "ORIGINAL"
    assert list(out.iterdir()) == []


def test_debian_python_refuses_the_attacks_too(tmp_path):
    from host_tools import require_host_tool

    require_host_tool(str(DEBIAN_PYTHON))
    version = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    script = (
        "import sys\n"
        "from smbyoc.archives import safe_extract\n"
        "from smbyoc.errors import ArchiveError\n"
        "try:\n"
        "    safe_extract(sys.argv[1], sys.argv[2])\n"
        "    print('EXTRACTED')\n"
        "except ArchiveError as e:\n"
        "    print('REFUSED', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for attack in sorted(ATTACKS):
        archive, canary, out = build(tmp_path / attack, attack)
        done = subprocess.run([str(DEBIAN_PYTHON), "-c", script, str(archive), str(out)],
                              capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"REFUSED {archive}: member "), (version, attack, done.stdout)
        assert canary.read_text() == "ORIGINAL", (version, attack)
        assert not out.exists()
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        add_file(tar, "v1/model.pt", b"weights")
        add_link(tar, "latest", "v1")
    done = subprocess.run([str(DEBIAN_PYTHON), "-c", script, str(good), str(tmp_path / "good")],
                          capture_output=True, text=True, env=env, check=False)
    assert done.stdout.strip() == "EXTRACTED", (version, done.stdout, done.stderr)
    assert (tmp_path / "good" / "latest" / "model.pt").read_bytes() == b"weights"


def test_writing_never_follows_a_link_even_if_the_checks_missed_it(tmp_path):
    """Defence in depth: the writer itself refuses to go through a link (checks bypassed here)."""
    canary = tmp_path / "canary.txt"
    canary.write_text("ORIGINAL")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_link(tar, "up", "..")
        add_file(tar, "up/canary.txt")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        entries = [(members[0], ("up",), "sym"), (members[1], ("up", "canary.txt"), "file")]
        with pytest.raises(ArchiveError, match=r"member 'up/canary.txt' cannot be extracted"):
            _write_all(tar, entries, str(root), archive, ExtractLimits(10**9, 10))
    assert canary.read_text() == "ORIGINAL"
