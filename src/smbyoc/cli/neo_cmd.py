"""``smbyoc neo-compile``: compile an ONNX model for a Neo CPU target locally (:mod:`smbyoc.neo_compile`)."""

from __future__ import annotations

from pathlib import Path

import click

from smbyoc.cli import library_errors
from smbyoc.errors import ConfigError
from smbyoc.neo_compile import TARGETS, compile_onnx


def parse_shape(text: str) -> tuple[str, list[int]]:
    """``x=1,8`` as ``("x", [1, 8])``; ConfigError naming the option otherwise."""
    name, sep, dims = text.partition("=")
    try:
        shape = [int(d) for d in dims.split(",")] if sep and dims else None
    except ValueError:
        shape = None
    if not name or shape is None or any(d < 1 for d in shape):
        raise ConfigError("expected NAME=D1,D2,... with positive integers", key=f"--input-shape {text}")
    return name, shape


@click.command("neo-compile")
@click.argument("onnx_file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("output_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="ml_c5",
              help="Neo target device (ml_c5 = TVM llvm -mcpu=skylake-avx512; llvm = generic x86_64).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D1,D2",
              help="Fix an input's shape (repeatable).  [default: the ONNX shapes; symbolic batch stays dynamic]")
@library_errors
def neo_compile(onnx_file: Path, output_dir: Path, target: str, input_shapes: tuple[str, ...]) -> None:
    """Compile ONNX_FILE with Apache TVM for a Neo CPU target into OUTPUT_DIR (compiled.so + compiled.meta),
    a directory `serve` loads with its default handler. Needs `pip install 'smbyoc[neo]' onnx`.

    \b
    Example:
      smbyoc neo-compile model/model.onnx neo-model --target ml_c5
    """
    shapes = dict(parse_shape(text) for text in input_shapes)
    out = compile_onnx(onnx_file, output_dir, target, shapes or None)
    click.echo(f"{out}: compiled.so, compiled.meta ({target})")


COMMANDS = [neo_compile]
