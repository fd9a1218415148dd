"""Resolve an image's Python packages on the host, into a wheelhouse inside the build context.

The image build then installs with ``pip install --no-index`` and reaches no network (hermetic; works
where containers cannot verify the index's certificate, and in private VPCs). ``pip download`` runs
with the host's pip and pip configuration, asking for wheels that match the *image*: its Python version,
architecture and glibc (see :meth:`Variant.pip_platforms`). Results are cached by a hash of everything
that decides them, so a rebuild with nothing changed resolves nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import smbyoc
from smbyoc.environment_variables import SMBYOC_CACHE_DIR
from smbyoc.errors import BuildError
from smbyoc.images.variants import Variant
from smbyoc.machine import host_machine

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
_COMPLETE = ".complete"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$SMBYOC_CACHE_DIR`` or ``~/.cache/smbyoc``."""
    configured = SMBYOC_CACHE_DIR.get(environ)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "smbyoc"


def smbyoc_runtime_requirements() -> list[str]:
    """smbyoc's own install requirements (no extras), so the wheelhouse has them too."""
    try:
        requires = metadata.requires("smbyoc") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an unpacked tree
        requires = ["click>=8.1"]
    return sorted(r for r in requires if "extra ==" not in r)


#: ``pip download --platform`` picks wheels for the image, but pip evaluates environment markers
#: (``platform_machine == "x86_64"``) against the *host* (pypa/pip#11664): resolving for aarch64 on x86_64 would
#: follow torch's x86_64-only ``nvidia-*`` requirements and fail. For a foreign image, pip runs with
#: ``platform.machine()`` answering the image's machine, so markers are evaluated as they would be inside it.
_PIP_AS_MACHINE = ("import platform, runpy, sys; machine = sys.argv.pop(1); platform.machine = lambda: machine; "
                   "runpy.run_module('pip', run_name='__main__', alter_sys=True)")


def pip_download_command(variant: Variant, requirement_files: Sequence[Path], requirements: Sequence[str],
                         dest: Path, python: str | None = None, host: str | None = None) -> list[str]:
    """The ``pip download`` argv resolving wheels for ``variant``'s image into ``dest`` (``host``: the machine
    pip runs on, default :func:`host_machine`; when it is not the image's, markers are evaluated for the image)."""
    interpreter = python or sys.executable
    launch = ([interpreter, "-m", "pip"] if (host or host_machine()) == variant.arch
              else [interpreter, "-c", _PIP_AS_MACHINE, variant.arch])
    cmd = [*launch, "download", "--disable-pip-version-check",
           "--progress-bar", "off", "--dest", str(dest), "--only-binary=:all:",
           "--implementation", "cp", "--python-version", variant.python_version]
    for platform in variant.pip_platforms():
        cmd += ["--platform", platform]
    for abi in (variant.python_tag, "abi3", "none"):
        cmd += ["--abi", abi]
    for url in variant.pip_extra_index_urls:
        cmd += ["--extra-index-url", url]
    for path in requirement_files:
        cmd += ["-r", str(path)]
    cmd += list(requirements)
    return cmd


def wheelhouse_key(variant: Variant, requirement_files: Sequence[Path], requirements: Sequence[str]) -> str:
    """Hash of everything that decides the resolution (requirements text, image Python/platform)."""
    h = hashlib.sha256()
    for part in (variant.python_version, variant.glibc, variant.platform, *variant.pip_extra_index_urls,
                 *requirements):
        h.update(part.encode() + b"\0")
    for path in requirement_files:
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _run(cmd: Sequence[str], what: str, progress: Progress | None) -> None:
    logger.debug("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for raw in proc.stdout:
        line = raw.rstrip()
        if not line or "is ignored: it is neither a file nor a directory" in line:
            continue
        tail = [*tail[-20:], line]
        if progress and line.startswith(("Collecting", "Saved", "Successfully", "ERROR")):
            progress(line)
    if proc.wait() != 0:
        errors = [t for t in tail if t.startswith("ERROR")] or tail[-1:]
        raise BuildError(f"{what} failed: {errors[-1] if errors else 'pip exited with ' + str(proc.returncode)}")


def resolve_wheelhouse(variant: Variant, requirement_files: Sequence[Path], requirements: Sequence[str],
                       dest: Path, *, cache: Path | None = None, progress: Progress | None = None) -> list[Path]:
    """Fill ``dest`` with the wheels for the requirements (from the cache when resolved before)."""
    for path in requirement_files:
        if not path.is_file():
            raise BuildError(f"requirements file {path} does not exist")
    key = wheelhouse_key(variant, requirement_files, requirements)
    cached = (cache or cache_dir()) / "wheelhouses" / f"{variant.image_variant}-{key}"  # ei shares cpu's
    if (cached / _COMPLETE).is_file():
        broken = unreadable_wheels(cached)
        if broken:
            logger.warning("wheelhouse %s: %s is not a readable wheel (truncated or damaged); resolving again",
                           cached, broken[0].name)
            if progress:
                progress(f"the cached wheelhouse holds a damaged wheel ({broken[0].name}); resolving it again")
            (cached / _COMPLETE).unlink()
        else:
            logger.info("wheelhouse %s: cached (%s)", key, cached)
    if not (cached / _COMPLETE).is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
        try:
            if progress:
                progress(f"resolving Python packages on the host for {variant.platform} "
                         f"Python {variant.python_version} ...")
            _run(pip_download_command(variant, requirement_files, requirements, tmp),
                 f"resolving the {variant.name} image's Python packages (pip download)", progress)
            (tmp / _COMPLETE).write_text(key + "\n", encoding="utf-8")
            shutil.rmtree(cached, ignore_errors=True)
            tmp.rename(cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted(p for p in cached.iterdir() if p.suffix == ".whl")
    for wheel in wheels:
        _link_or_copy(wheel, dest / wheel.name)
    return [dest / w.name for w in wheels]


def unreadable_wheels(directory: Path) -> list[Path]:
    """The ``.whl`` files in ``directory`` that are not readable zip archives (a truncated download, a damaged
    cache): found in milliseconds by reading each central directory, before a build that would fail on them."""
    broken = []
    for wheel in sorted(directory.glob("*.whl")):
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError):
            broken.append(wheel)
    return broken


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def source_tree() -> Path | None:
    """The checkout smbyoc runs from (src layout), or None for an installed wheel."""
    root = Path(smbyoc.__file__).resolve().parent.parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "smbyoc").is_dir() else None


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted((root / "src" / "smbyoc").rglob("*"))]
    for extra in ("Dockerfile.train", "Dockerfile.serve", "Dockerfile.neuron"):
        files.append(root / extra)
    files += sorted((root / "images").rglob("*"))
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def source_fingerprint() -> str:
    """What identifies the smbyoc an image is built from: the checkout's file hash, else the version."""
    root = source_tree()
    return _tree_hash(root) if root is not None else f"version-{smbyoc.__version__}"


def build_smbyoc_wheel(dest: Path, *, cache: Path | None = None, progress: Progress | None = None) -> Path:
    """A wheel of this smbyoc in ``dest``: built from the checkout (cached by a hash of its files)."""
    root = source_tree()
    if root is None:
        return repack_installed_wheel(dest, progress=progress)
    key = _tree_hash(root)
    cached = (cache or cache_dir()) / "smbyoc-wheels" / key
    if not (cached / _COMPLETE).is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cached.parent))
        try:
            if progress:
                progress(f"building the smbyoc {smbyoc.__version__} wheel from {root}")
            # --no-build-isolation: the build backend is already installed; no network needed.
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--disable-pip-version-check", "-q", "-w", str(tmp), str(root)],
                 "building the smbyoc wheel", progress)
            (tmp / _COMPLETE).write_text(key + "\n", encoding="utf-8")
            shutil.rmtree(cached, ignore_errors=True)
            tmp.rename(cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    wheels = sorted(cached.glob("smbyoc-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one smbyoc wheel in {cached}, found {len(wheels)}")
    dest.mkdir(parents=True, exist_ok=True)
    _link_or_copy(wheels[0], dest / wheels[0].name)
    return dest / wheels[0].name


def repack_installed_wheel(dest: Path, *, progress: Progress | None = None) -> Path:
    """A wheel of the smbyoc installed in this environment (``pip install smbyoc``), for its images.

    An installed package keeps no wheel; its files and ``*.dist-info`` are packed again as the wheel they
    came from (sources, package data, metadata and entry points; no byte code), with a fresh RECORD.
    Written to a temporary name and renamed.
    """
    import base64
    import csv
    import io
    import zipfile

    dist = metadata.distribution("smbyoc")
    package = Path(smbyoc.__file__).resolve().parent
    site = package.parent
    info = Path(str(dist.locate_file(""))) / f"smbyoc-{dist.version}.dist-info"
    if not info.is_dir():
        candidates = sorted(site.glob("smbyoc-*.dist-info"))
        if len(candidates) != 1:
            raise BuildError(f"cannot find smbyoc's .dist-info beside {package} to pack its wheel")
        info = candidates[0]
    if progress:
        progress(f"packing the installed smbyoc {dist.version} ({package}) as a wheel")
    name = f"smbyoc-{dist.version}-py3-none-any.whl"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    tmp = dest / f".{name}.partial"
    skip_info = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    records: list[tuple[str, str, str]] = []
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as whl:
            members = [(f, f.relative_to(site).as_posix()) for f in sorted(package.rglob("*"))]
            members += [(f, f"{info.name}/{f.name}") for f in sorted(info.iterdir()) if f.name not in skip_info]
            for path, arcname in members:
                if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                data = path.read_bytes()
                whl.writestr(zipfile.ZipInfo.from_file(path, arcname), data, zipfile.ZIP_DEFLATED)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                records.append((arcname, f"sha256={digest}", str(len(data))))
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerows(records)
            writer.writerow((f"{info.name}/RECORD", "", ""))
            whl.writestr(f"{info.name}/RECORD", out.getvalue())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
