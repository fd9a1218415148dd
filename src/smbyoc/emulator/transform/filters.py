"""``DataProcessing`` of a transform job: ``InputFilter``, ``JoinSource`` and ``OutputFilter``, per record.

SageMaker's guide ("Associate Prediction Results with Input Records", DG
``batch-transform-data-processing.md``) supports a JSONPath subset on CSV and JSON records::

    $                     the whole record (identity; any content type, bytes passed through untouched)
    $.name  $.a.b         a child by name (JSON objects)
    $['a']  $['a','b']    bracket names; several names give an object with those keys (Jayway JsonPath)
    $.a.['b','c']         (the guide's own spelling, a dot before the bracket, is accepted too)
    $[1]  $[-1]  $[1,3,5] indexes (negative from the end); CSV rows are arrays of their columns
    $[2:5]  $[:5]  $[2:]  a slice; at most one per bracket, mixed with indexes as in $[0,5:]
    $.*  $[*]  $.id.*     wildcards

Semantics follow Jayway JsonPath (the guide's reference): a *definite* path (names and single indexes only)
gives the value itself, any other path the list of what it matched. Two points follow the guide where it
differs from Jayway: a slice's end is **inclusive** ("``$[1:4]`` specifies the second through fifth
columns"; "``[:5]`` ... from the first column (index 0) through the sixth column"), and an index outside the
record is an error ("If you specify indexes that aren't within the dimension size of the joined dataset, you
get an error"). A name that is missing is an error too. Two slices in one bracket (``$[0:2,246:]``) are
refused as SageMaker does ("only single range filters ... are supported").

CSV records (``text/csv``) are parsed as RFC 4180 rows and only index paths apply; the result is written back
as one CSV row (``csv`` module quoting). JSON records (``application/json``, ``application/jsonlines``...)
are parsed with :mod:`json` and the result written compactly. A record's line terminator is kept.

JoinSource ``Input`` (DG + BOTO ``DataProcessing.JoinSource``): CSV: the input row followed by the output
row's columns (``1,2,3`` + ``1`` -> ``1,2,3,1``, text kept as it is); JSON: an input object gets the output
under ``"SageMakerOutput"``; any other input value becomes ``{"SageMakerInput": input, "SageMakerOutput":
output}``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smbyoc.errors import ConfigError, TransformError

#: Content types whose records are CSV rows / JSON values (the media type, parameters ignored).
CSV_CONTENT_TYPES = frozenset({"text/csv", "application/csv"})
JSON_CONTENT_TYPES = frozenset(
    {"application/json", "application/jsonlines", "application/x-jsonlines", "application/jsonl", "text/json"}
)


# -------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Names:
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Slice:
    start: int | None
    end: int | None  # inclusive (module docstring)


@dataclass(frozen=True)
class _Indexes:
    items: tuple[int | _Slice, ...]


@dataclass(frozen=True)
class _Wildcard:
    pass


_Step = _Names | _Indexes | _Wildcard

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_QUOTED = re.compile(r"\s*'((?:[^'\\]|\\.)*)'\s*")
_INT = re.compile(r"\s*(-?\d+)\s*")


def _bad(expression: str, why: str) -> ConfigError:
    return ConfigError(f"JSONPath {expression!r} is not supported by SageMaker batch transform: {why}")


def _parse_bracket(expression: str, inner: str) -> _Step:
    if inner.strip() == "*":
        return _Wildcard()
    if inner.lstrip().startswith("'"):
        names = []
        for part in _split_commas(inner):
            match = _QUOTED.fullmatch(part)
            if not match:
                raise _bad(expression, f"[{inner}]: expected 'name' or 'name','name',...")
            names.append(match.group(1).replace("\\'", "'"))
        return _Names(tuple(names))
    items: list[int | _Slice] = []
    for part in inner.split(","):
        if ":" in part:
            bounds = part.split(":")
            if len(bounds) != 2:
                raise _bad(expression, f"[{inner}]: slices with a step are not supported")
            ends: list[int | None] = []
            for bound in bounds:
                if not bound.strip():
                    ends.append(None)
                    continue
                match = _INT.fullmatch(bound)
                if not match:
                    raise _bad(expression, f"[{inner}]: {bound.strip()!r} is not an integer")
                ends.append(int(match.group(1)))
            items.append(_Slice(ends[0], ends[1]))
        else:
            match = _INT.fullmatch(part)
            if not match:
                raise _bad(expression, f"[{inner}]: {part.strip()!r} is not an index or a range")
            items.append(int(match.group(1)))
    if sum(isinstance(item, _Slice) for item in items) > 1:
        raise _bad(expression, f"[{inner}]: only one range per bracket is supported (e.g. [1:5] or [0,5:])")
    return _Indexes(tuple(items))


def _split_commas(inner: str) -> list[str]:
    """Split ``'a','b'`` at the commas outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in inner:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "'":
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _parse(expression: str) -> tuple[_Step, ...]:
    text = expression.strip()
    if not text.startswith("$"):
        raise _bad(expression, "it must start with '$'")
    steps: list[_Step] = []
    pos = 1
    while pos < len(text):
        if text.startswith("..", pos):
            raise _bad(expression, "deep scan '..' is not supported")
        if text[pos] == ".":
            pos += 1
            if pos < len(text) and text[pos] == "[":
                continue  # "$.a.['b','c']": the guide's spelling of "$.a['b','c']"
            if text.startswith("*", pos):
                steps.append(_Wildcard())
                pos += 1
                continue
            match = _NAME.match(text, pos)
            if not match:
                raise _bad(expression, f"expected a name after '.' at position {pos}")
            steps.append(_Names((match.group(0),)))
            pos = match.end()
        elif text[pos] == "[":
            end = _bracket_end(text, pos)
            if end < 0:
                raise _bad(expression, f"unclosed '[' at position {pos}")
            inner = text[pos + 1:end]
            if inner.lstrip().startswith("?") or inner.lstrip().startswith("("):
                raise _bad(expression, "filter and script expressions are not supported")
            steps.append(_parse_bracket(expression, inner))
            pos = end + 1
        else:
            raise _bad(expression, f"unexpected {text[pos]!r} at position {pos}")
    for step in steps[:-1]:
        if isinstance(step, _Names) and len(step.names) > 1:
            raise _bad(expression, "several names in brackets are supported only as the last step")
    return tuple(steps)


def _bracket_end(text: str, start: int) -> int:
    quoted = escaped = False
    for pos in range(start + 1, len(text)):
        char = text[pos]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "'":
            quoted = not quoted
        elif char == "]" and not quoted:
            return pos
    return -1


def check_filter(expression: str) -> None:
    """Raise :class:`ConfigError` naming ``expression`` when SageMaker's JSONPath subset cannot express it."""
    _parse(expression)


# ------------------------------------------------------------------------------------------ evaluating


def _definite(steps: Sequence[_Step]) -> bool:
    for step in steps:
        if isinstance(step, _Wildcard):
            return False
        if isinstance(step, _Indexes) and (len(step.items) != 1 or isinstance(step.items[0], _Slice)):
            return False
    return True


def _select(value: Any, step: _Step, expression: str) -> list[Any]:
    """What ``step`` selects in ``value``, as a list of matches (a multi-name step: one object)."""
    if isinstance(step, _Wildcard):
        if isinstance(value, dict):
            return list(value.values())
        if isinstance(value, list):
            return list(value)
        return []
    if isinstance(step, _Names):
        if not isinstance(value, dict):
            raise TransformError(
                f"JSONPath {expression!r}: {step.names[0]!r} applied to a {_kind(value)}, not an object"
            )
        missing = [name for name in step.names if name not in value]
        if missing:
            raise TransformError(f"JSONPath {expression!r}: the record has no {missing[0]!r}")
        if len(step.names) == 1:
            return [value[step.names[0]]]
        return [{name: value[name] for name in step.names}]
    if not isinstance(value, list):
        raise TransformError(f"JSONPath {expression!r}: an index applied to a {_kind(value)}, not an array")
    out: list[Any] = []
    size = len(value)
    for item in step.items:
        if isinstance(item, _Slice):
            start = 0 if item.start is None else (item.start + size if item.start < 0 else item.start)
            end = size if item.end is None else (item.end + size if item.end < 0 else item.end) + 1
            out.extend(value[max(start, 0):max(end, 0)])
        else:
            if not -size <= item < size:
                raise TransformError(f"JSONPath {expression!r}: index {item} is outside the record ({size} items)")
            out.append(value[item])
    return out


def _kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def evaluate(value: Any, expression: str) -> Any:
    """Apply ``expression`` to a parsed record: the value for a definite path, else the list of matches."""
    steps = _parse(expression)
    current = [value]
    for step in steps:
        current = [match for item in current for match in _select(item, step, expression)]
    if _definite(steps):
        return current[0]
    return current


# ------------------------------------------------------------------------------------------- records


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_csv(content_type: str) -> bool:
    return _media_type(content_type) in CSV_CONTENT_TYPES


def _is_json(content_type: str) -> bool:
    media = _media_type(content_type)
    return media in JSON_CONTENT_TYPES or media.endswith("+json")


def _split_terminator(record: bytes) -> tuple[bytes, bytes]:
    if record.endswith(b"\r\n"):
        return record[:-2], b"\r\n"
    if record.endswith(b"\n"):
        return record[:-1], b"\n"
    return record, b""


def _decode(record: bytes, what: str) -> str:
    try:
        return record.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TransformError(f"{what} is not UTF-8 text: {e}") from e


def _csv_row(text: str, what: str) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as e:
        raise TransformError(f"{what} is not a valid CSV row: {e}") from e
    if len(rows) > 1:
        raise TransformError(f"{what} holds {len(rows)} CSV rows, expected one (embedded newlines are not supported)")
    return rows[0] if rows else []


def _csv_text(fields: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TransformError(f"{what} is not valid JSON: {e}") from e


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def apply_filter(record: bytes, content_type: str, expression: str) -> bytes:
    """``record`` filtered by the JSONPath ``expression`` (module docstring); ``"$"`` returns it unchanged.

    Raises :class:`ConfigError` for an expression outside the subset, or a content type that is neither CSV
    nor JSON; :class:`TransformError` when the record does not fit the expression.
    """
    if expression.strip() == "$":
        return record
    steps = _parse(expression)
    body, terminator = _split_terminator(record)
    what = f"record filtered by {expression!r}"
    if _is_csv(content_type):
        if any(isinstance(step, _Names) for step in steps):
            raise ConfigError(
                f"JSONPath {expression!r} selects by name, but {content_type} records are arrays of columns: "
                "use indexes such as $[0] or $[1:]"
            )
        result = evaluate(_csv_row(_decode(body, what), what), expression)
        fields = result if isinstance(result, list) else [result]
        return _csv_text(fields).encode("utf-8") + terminator
    if _is_json(content_type):
        result = evaluate(_json_value(_decode(body, what), what), expression)
        return _json_bytes(result) + terminator
    raise ConfigError(
        f"JSONPath {expression!r}: DataProcessing filters need CSV or JSON records, not {content_type!r}"
    )


def join_input(input_record: bytes, output_record: bytes, content_type: str, accept: str) -> bytes:
    """JoinSource ``Input``: ``input_record`` joined with the model's ``output_record`` (module docstring).

    ``content_type`` is the input's; ``accept`` the output's. A JSON input takes the output parsed as JSON
    when ``accept`` is JSON, else as text (its trailing newline removed). The input's line terminator is kept.
    """
    body, terminator = _split_terminator(input_record)
    output, _ = _split_terminator(output_record)
    if _is_csv(content_type):
        if _is_json(accept):
            parsed = _json_value(_decode(output, "transform output"), "transform output")
            output = _csv_text(parsed if isinstance(parsed, list) else [parsed]).encode("utf-8")
        return body + b"," + output + terminator
    if _is_json(content_type):
        value = _json_value(_decode(body, "input record"), "input record")
        text = _decode(output, "transform output")
        result = _json_value(text, "transform output") if _is_json(accept) else text
        if isinstance(value, dict):
            joined = dict(value)
            joined["SageMakerOutput"] = result
        else:
            joined = {"SageMakerInput": value, "SageMakerOutput": result}
        return _json_bytes(joined) + terminator
    raise ConfigError(f"JoinSource Input needs CSV or JSON input records, not {content_type!r}")
