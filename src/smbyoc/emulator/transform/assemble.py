"""``TransformOutput.AssembleWith``: how the outputs of one object become its ``<object>.out`` bytes.

BOTO ``TransformOutput.AssembleWith``: "To concatenate the results in binary format, specify ``None``. To add
a newline character at the end of every transformed record, specify ``Line``."

``Line`` ends every output with exactly one ``b"\\n"``: an output that already ends with a newline (as most
CSV/JSON Lines encoders write, e.g. sagemaker-inference's ``encode_csv``) gets none added, so the file has no
blank lines between records. (SDK local mode appends ``b"\\n"`` unconditionally, after every response, which
doubles them; ``always_append=True`` reproduces that.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from smbyoc.errors import ConfigError

ASSEMBLE_WITH = ("None", "Line")


def assemble(outputs: Iterable[bytes], assemble_with: str, *, always_append: bool = False) -> Iterator[bytes]:
    """The chunks to write, in order, for ``outputs`` (one per record or per mini-batch response)."""
    if assemble_with not in ASSEMBLE_WITH:
        raise ConfigError(f"{assemble_with!r} is not one of {', '.join(ASSEMBLE_WITH)}", key="AssembleWith")
    if assemble_with == "None":
        yield from outputs
        return
    for output in outputs:
        yield output
        if always_append or not output.endswith(b"\n"):
            yield b"\n"
