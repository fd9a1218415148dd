"""AssembleWith: how transform outputs become the ``<object>.out`` bytes."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbyoc.emulator.transform.assemble import assemble
from smbyoc.emulator.transform.records import read_records, split_output
from smbyoc.errors import ConfigError


def assembled(outputs: list[bytes], assemble_with: str, **kwargs: bool) -> bytes:
    return b"".join(assemble(outputs, assemble_with, **kwargs))


def test_none_concatenates_the_bytes_as_they_are():
    assert assembled([b"\x00\x01", b"", b"ab\n", b"c"], "None") == b"\x00\x01ab\nc"
    assert assembled([], "None") == b""


def test_line_ends_every_output_with_one_newline():
    assert assembled([b"0.1", b"0.2\n", b"", b"a\nb"], "Line") == b"0.1\n0.2\n\na\nb\n"
    assert assembled([], "Line") == b""


def test_line_always_append_reproduces_sdk_local_mode():
    assert assembled([b"0.1\n", b"0.2"], "Line", always_append=True) == b"0.1\n\n0.2\n"


def test_unknown_assemble_with_is_a_config_error():
    with pytest.raises(ConfigError, match="AssembleWith: 'Lines' is not one of None, Line"):
        assembled([b"x"], "Lines")


def test_outputs_are_streamed_lazily():
    def outputs():
        yield b"first"
        raise RuntimeError("not reached before the first chunk is taken")

    chunks = assemble(outputs(), "Line")
    assert next(chunks) == b"first"
    assert next(chunks) == b"\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=30))
def test_property_split_output_then_assemble_gives_back_a_line_file(lines):
    data = b"".join(line + b"\n" for line in lines)
    records = list(read_records(io.BytesIO(data), "Line", source="in"))
    outputs = split_output(data, "Line", len(records)) if records else []
    assert outputs is not None
    assert assembled(outputs, "Line") == data
    assert assembled(records, "Line") == data
    assert assembled(records, "None") == data
