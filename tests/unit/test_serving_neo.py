"""Neo/TVM compiled model directories: detection, metadata, library checks and the errors the default handler
gives before any runtime runs (the real compile-and-serve path is in tests/integration/test_serve_neo.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.cli.neo_cmd import parse_shape
from smbyoc.errors import ConfigError, SmbyocError, UserCodeError
from smbyoc.neo_compile import compile_onnx
from smbyoc.serving import neo
from smbyoc.serving.default_handlers import find_default_model, load_default_model

ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


def elf_header(arch: str) -> bytes:
    """The first 64 bytes of a little-endian ELF64 shared object for ``arch`` (enough for the checks)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + (3).to_bytes(2, "little") + ELF_MACHINE[arch].to_bytes(2, "little") + bytes(44)


def write_dir(model: Path, files: dict[str, bytes | str]) -> Path:
    model.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (model / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return model


META = json.dumps({"Model": {"Inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}],
                             "Outputs": [{"name": "y", "dtype": "float32"}]},
                   "Compilation": {"Target": {"kind": "llvm", "mcpu": "skylake-avx512"}}})
HOST = neo.host_machine()
OTHER = "aarch64" if HOST == "x86_64" else "x86_64"


def test_neo_graph_layout_is_recognised_with_aux_files_ignored(tmp_path: Path) -> None:
    model = write_dir(tmp_path / "m", {"compiled.so": elf_header(HOST), "compiled.params": b"p",
                                       "compiled_model.json": "{}", "compiled.meta": META, "manifest": "x",
                                       "libdlr.so": b"l", "model.json": "{}"})
    artifact = neo.find_artifact(model)
    assert artifact is not None
    assert (artifact.library.name, artifact.graph and artifact.graph.name, artifact.params and artifact.params.name,
            artifact.meta and artifact.meta.name) == ("compiled.so", "compiled_model.json", "compiled.params",
                                                      "compiled.meta")
    assert artifact.layout == "graph"
    assert find_default_model(model) == "dlr"


def test_relax_layout_is_a_library_with_metadata(tmp_path: Path) -> None:
    model = write_dir(tmp_path / "m", {"model_x86.so": elf_header(HOST), "model_x86.meta": META})
    artifact = neo.find_artifact(model)
    assert artifact is not None and artifact.layout == "relax" and artifact.library.name == "model_x86.so"


@pytest.mark.parametrize("files", [
    {"compiled.so": b"x"},                                 # a lone library: could be anything
    {"compiled.params": b"p", "compiled_model.json": "{}"},  # no library
    {"libdlr.so": b"l", "compiled.meta": META},            # only DLR's own library
    {"compiled.so": b"x", "compiled_model.json": "{}"},    # graph without params
])
def test_incomplete_sets_are_not_neo_dirs(tmp_path: Path, files: dict[str, bytes | str]) -> None:
    model = write_dir(tmp_path / "m", files)
    assert neo.find_artifact(model) is None
    assert find_default_model(model) is None
    with pytest.raises(UserCodeError, match="no model_fn and no default model"):
        load_default_model(model, 1)


def test_onnx_and_torchscript_win_over_a_compiled_library(tmp_path: Path) -> None:
    model = write_dir(tmp_path / "m", {"compiled.so": elf_header(HOST), "compiled.meta": META, "model.onnx": b""})
    assert find_default_model(model) == "onnx"


def test_two_libraries_without_compiled_so_is_one_clear_error(tmp_path: Path) -> None:
    model = write_dir(tmp_path / "m", {"a.so": elf_header(HOST), "b.so": elf_header(HOST), "compiled.meta": META})
    assert neo.is_neo_dir(model)
    with pytest.raises(UserCodeError, match=r"several compiled library \(\.so\) files \(a\.so, b\.so\)"):
        load_default_model(model, 1)


def test_metadata_is_read_and_a_bad_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "compiled.meta"
    path.write_text(META)
    meta = neo.read_metadata(path)
    assert meta.inputs == (neo.TensorSpec("x", "float32", (-1, 3)),)
    assert meta.outputs == ("y",) and meta.mcpu == "skylake-avx512"
    path.write_text("{not json")
    with pytest.raises(UserCodeError, match=r"compiled\.meta: not a valid Neo metadata file"):
        neo.read_metadata(path)
    path.write_text(json.dumps({"Model": {"Inputs": [{"name": "x", "dtype": "float99"}]}}))
    with pytest.raises(UserCodeError, match="float99"):
        neo.read_metadata(path)


def test_library_for_another_architecture_is_refused_before_loading(tmp_path: Path) -> None:
    model = write_dir(tmp_path / "m", {"compiled.so": elf_header(OTHER), "compiled.meta": META})
    with pytest.raises(UserCodeError) as info:
        load_default_model(model, 1)
    message = str(info.value)
    assert f"compiled for {OTHER}, but this machine is {HOST}" in message and "compiled.so" in message


def test_a_file_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "compiled.so"
    path.write_bytes(b"MZ not a linux library at all")
    with pytest.raises(UserCodeError, match="not an ELF shared library"):
        neo.check_library(path)
    import numpy

    real = next(Path(numpy.__file__).parent.glob("*core/_multiarray_umath*.so"))  # numpy 2: _core, 1: core
    neo.check_library(real)  # a real shared library built for this machine passes


def test_avx512_model_on_a_cpu_without_avx512_is_refused() -> None:
    meta = neo.NeoMetadata(mcpu="skylake-avx512")
    with pytest.raises(UserCodeError, match="no avx512f"):
        neo.check_cpu(meta, Path("compiled.meta"), frozenset({"sse4_2", "avx2"}))
    neo.check_cpu(meta, Path("compiled.meta"), frozenset({"avx2", "avx512f"}))
    neo.check_cpu(neo.NeoMetadata(mcpu="haswell"), Path("compiled.meta"), frozenset({"avx2"}))


def test_missing_tvm_runtime_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_dir(tmp_path / "m", {"compiled.so": elf_header(HOST), "compiled.meta": META.replace(
        "skylake-avx512", "x86-64")})
    monkeypatch.setitem(sys.modules, "tvm", None)  # import tvm raises ImportError
    with pytest.raises(UserCodeError, match=r"TVM runtime is not installed \(pip install 'smbyoc\[neo\]'"):
        load_default_model(model, 1)


def test_graph_layout_without_dlr_names_dlr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_dir(tmp_path / "m", {"compiled.so": elf_header(HOST), "compiled.params": b"p",
                                       "compiled_model.json": "{}"})
    monkeypatch.setitem(sys.modules, "dlr", None)
    with pytest.raises(UserCodeError, match="graph layout.*dlr is not installed"):
        load_default_model(model, 1)


def test_relax_loader_reports_a_library_tvm_cannot_load(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    bogus = tmp_path / "m"
    write_dir(bogus, {"compiled.meta": META.replace("skylake-avx512", "x86-64")})
    (bogus / "compiled.so").write_bytes(elf_header(HOST) + bytes(512))  # ELF header, nothing loadable
    with pytest.raises(UserCodeError, match=r"compiled\.so: TVM .* cannot load it"):
        load_default_model(bogus, 1)


def test_parse_shape_and_cli_errors(tmp_path: Path) -> None:
    assert parse_shape("x=1,8") == ("x", [1, 8])
    for bad in ("x", "x=", "=1", "x=1,a", "x=0"):
        with pytest.raises(ConfigError, match="--input-shape"):
            parse_shape(bad)
    _register()  # through the group, as `smbyoc` runs it (a bare command would cache a help option without -h)
    result = CliRunner().invoke(cli, ["neo-compile", str(tmp_path / "missing.onnx"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "missing.onnx: no such ONNX file" in result.output
    result = CliRunner().invoke(cli, ["neo-compile", str(tmp_path / "a.onnx"), str(tmp_path / "out"),
                                      "--target", "ml_p3"])
    assert result.exit_code == 2 and "ml_p3" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_target_in_the_library_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown target 'ml_p3'"):
        compile_onnx(tmp_path / "a.onnx", tmp_path / "out", "ml_p3")


def test_aarch64_target_on_x86_needs_a_cross_linker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if HOST != "x86_64":
        pytest.skip("cross-compiling check is for x86_64 hosts")
    onnx_file = tmp_path / "a.onnx"
    onnx_file.write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-gcc
    with pytest.raises(SmbyocError, match="aarch64-linux-gnu-gcc"):
        compile_onnx(onnx_file, tmp_path / "out", "ml_m6g")
