"""DataProcessing: InputFilter/OutputFilter JSONPath on CSV and JSON records, and JoinSource Input.

Expected values follow SageMaker's guide "Associate Prediction Results with Input Records" (DG
``batch-transform-data-processing.md``), its examples reproduced in the last tests.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbyoc.emulator.transform.filters import apply_filter, check_filter, evaluate, join_input
from smbyoc.errors import ConfigError, TransformError

CSV = "text/csv"
JSON = "application/json"
JSONL = "application/jsonlines"

ROW = b"id7,1.5,2,3,\"a,b\",last\n"
DOC = {"id": 7, "features": [1, 2, 3, 4], "meta": {"source": "s3", "day": 3}, "name's": "q"}


def json_filter(value, expression: str):
    return json.loads(apply_filter(json.dumps(value).encode(), JSON, expression))


# -------------------------------------------------------------------------------------------------- CSV


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$", ROW),
        ("$[0]", b"id7\n"),
        ("$[-1]", b"last\n"),
        ("$[1,3,5]", b"1.5,3,last\n"),
        ("$[1:]", b'1.5,2,3,"a,b",last\n'),
        ("$[1:3]", b"1.5,2,3\n"),  # the end is inclusive (DG: "$[1:4] ... second through fifth columns")
        ("$[:2]", b"id7,1.5,2\n"),
        ("$[2:]", b'2,3,"a,b",last\n'),
        ("$[0,4:]", b'id7,"a,b",last\n'),
        ("$[4]", b'"a,b"\n'),
        ("$[*]", ROW),
        ("$[:-2]", b'id7,1.5,2,3,"a,b"\n'),
        ("$[1:100]", b'1.5,2,3,"a,b",last\n'),
    ],
)
def test_csv_filters(expression, expected):
    check_filter(expression)
    assert apply_filter(ROW, CSV, expression) == expected


def test_csv_filter_keeps_the_record_terminator_or_its_absence():
    assert apply_filter(b"1,2,3", CSV, "$[1:]") == b"2,3"
    assert apply_filter(b"1,2,3\r\n", "text/csv; charset=utf-8", "$[1:]") == b"2,3\r\n"


def test_csv_index_out_of_range_is_an_error():
    with pytest.raises(TransformError, match=r"'\$\[6\]': index 6 is outside the record \(6 items\)"):
        apply_filter(ROW, CSV, "$[6]")
    with pytest.raises(TransformError, match="index -7"):
        apply_filter(ROW, CSV, "$[-7]")


def test_csv_filters_by_name_are_refused():
    with pytest.raises(ConfigError, match=r"'\$\.features' selects by name.*text/csv"):
        apply_filter(ROW, CSV, "$.features")


def test_malformed_csv_record():
    with pytest.raises(TransformError, match="not a valid CSV row"):
        apply_filter(b'1,"unterminated\n', CSV, "$[0]")


# ------------------------------------------------------------------------------------------------- JSON


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$", DOC),
        ("$.features", [1, 2, 3, 4]),
        ("$.meta.source", "s3"),
        ("$['features']", [1, 2, 3, 4]),
        ("$['name\\'s']", "q"),
        ("$['id','meta']", {"id": 7, "meta": DOC["meta"]}),
        ("$.meta['source','day']", {"source": "s3", "day": 3}),
        ("$.meta.['source','day']", {"source": "s3", "day": 3}),  # the guide's spelling
        ("$.features[1]", 2),
        ("$.features[-1]", 4),
        ("$.features[0,2]", [1, 3]),
        ("$.features[1:2]", [2, 3]),
        ("$.features[2:]", [3, 4]),
        ("$.features[:1]", [1, 2]),
        ("$.features[*]", [1, 2, 3, 4]),
        ("$.meta.*", ["s3", 3]),
        ("$.*", [7, [1, 2, 3, 4], DOC["meta"], "q"]),
        ("$[ 'id' , 'features' ]", {"id": 7, "features": [1, 2, 3, 4]}),
    ],
)
def test_json_object_filters(expression, expected):
    check_filter(expression)
    assert json_filter(DOC, expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("$[0]", "id"), ("$[1:]", [1, 2, 3]), ("$[0,-1]", ["id", 3]), ("$[1:2]", [1, 2]), ("$[*]", ["id", 1, 2, 3])],
)
def test_json_array_filters(expression, expected):
    assert json_filter(["id", 1, 2, 3], expression) == expected


def test_json_lines_record_keeps_its_newline_and_is_compact():
    assert apply_filter(b'{"id": 1, "features": [1, 2]}\n', JSONL, "$.features") == b"[1,2]\n"
    assert apply_filter(b'{"a": "\xc3\xa9"}', JSON, "$.a") == '"\u00e9"'.encode()


@pytest.mark.parametrize(
    ("record", "expression", "message"),
    [
        (DOC, "$.missing", "the record has no 'missing'"),
        (DOC, "$['id','missing']", "the record has no 'missing'"),
        (DOC, "$.features[4]", "index 4 is outside the record"),
        (DOC, "$.id.x", "'x' applied to a number, not an object"),
        (DOC, "$[0]", "an index applied to a object, not an array"),
        ([1, 2], "$.a", "'a' applied to a array"),
    ],
)
def test_json_records_that_do_not_fit_the_expression(record, expression, message):
    with pytest.raises(TransformError, match=message):
        json_filter(record, expression)


def test_bad_records_and_content_types():
    with pytest.raises(TransformError, match="not valid JSON"):
        apply_filter(b"{nope", JSON, "$.a")
    with pytest.raises(TransformError, match="not UTF-8"):
        apply_filter(b"\xff\xfe", JSON, "$.a")
    with pytest.raises(ConfigError, match="CSV or JSON records, not 'application/x-recordio-protobuf'"):
        apply_filter(b"\x00", "application/x-recordio-protobuf", "$[1:]")
    assert apply_filter(b"\x00binary", "application/x-recordio-protobuf", "$") == b"\x00binary"


# ------------------------------------------------------------------------------------------ unsupported


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "features",
        "$..id",
        "$[?(@.price < 10)]",
        "$[(@.length-1)]",
        "$[0:2,246:]",  # SageMaker: "only single range filters ... are supported"
        "$[1:5:2]",
        "$[a]",
        "$.['a','b'].c",
        "$.",
        "$[0",
        "$.a b",
        "$['a',b]",
        "$.features[x:]",
    ],
)
def test_unsupported_expressions_are_config_errors_naming_them(expression):
    with pytest.raises(ConfigError, match="^JSONPath " + re.escape(repr(expression))):
        check_filter(expression)
    with pytest.raises(ConfigError):
        apply_filter(b"1,2,3", CSV, expression)


# ------------------------------------------------------------------------------------------------- join


def test_join_csv_appends_the_output_columns():
    # DG: "if the record is [1,2,3], and the label result is [1], then the output file would contain [1,2,3,1]"
    assert join_input(b"1,2,3\n", b"1\n", CSV, CSV) == b"1,2,3,1\n"
    assert join_input(b'7,"a,b"', b"0.2,0.8", CSV, CSV) == b'7,"a,b",0.2,0.8'
    assert join_input(b"1,2\r\n", b"[0.5, 1]", CSV, JSON) == b"1,2,0.5,1\r\n"


def test_join_json_object_gets_sagemaker_output():
    joined = join_input(b'{"key": 1}\n', b'{"label": 1}\n', JSONL, JSON)
    assert joined.endswith(b"\n")
    assert json.loads(joined) == {"key": 1, "SageMakerOutput": {"label": 1}}
    assert json.loads(join_input(b'{"key": 1}', b"0.25\n", JSON, CSV)) == {"key": 1, "SageMakerOutput": "0.25"}


def test_join_json_non_object_goes_under_sagemaker_input():
    joined = join_input(b"[1, 2, 3]", b"[0.5]", JSON, JSON)
    assert json.loads(joined) == {"SageMakerInput": [1, 2, 3], "SageMakerOutput": [0.5]}


def test_join_refuses_other_content_types():
    with pytest.raises(ConfigError, match="JoinSource Input needs CSV or JSON"):
        join_input(b"x", b"y", "application/octet-stream", CSV)


# ------------------------------------------------------------------------------- the guide's examples


def test_guide_example_csv_id_column():
    # InputFilter "$[1:]", JoinSource Input, OutputFilter "$[0,-1]": the ID column, then the prediction
    record = b"id-1,5.1,3.5,1.4,0.2\n"
    sent = apply_filter(record, CSV, "$[1:]")
    assert sent == b"5.1,3.5,1.4,0.2\n"
    joined = join_input(record, b"0.97\n", CSV, CSV)
    assert apply_filter(joined, CSV, "$[0,-1]") == b"id-1,0.97\n"


def test_guide_example_json_id_attribute():
    record = b'{"id": "r1", "features": [0.1, 0.2]}\n'
    sent = apply_filter(record, JSONL, "$.features")
    assert sent == b"[0.1,0.2]\n"
    joined = join_input(record, b'{"label": 1}', JSONL, JSONL)
    assert json.loads(apply_filter(joined, JSONL, "$['id','SageMakerOutput']")) == {
        "id": "r1",
        "SageMakerOutput": {"label": 1},
    }


# --------------------------------------------------------------------------------------------- property

field = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(field, min_size=1, max_size=8), st.data())
def test_property_csv_slices_select_the_same_columns_as_python(fields, data):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    record = out.getvalue().encode()
    start = data.draw(st.integers(min_value=0, max_value=len(fields) - 1))
    end = data.draw(st.integers(min_value=start, max_value=len(fields) - 1))
    result = apply_filter(record, CSV, f"$[{start}:{end}]")
    assert next(csv.reader(io.StringIO(result.decode()))) == fields[start:end + 1]
    assert evaluate(fields, f"$[{start}:{end}]") == fields[start:end + 1]
    assert next(csv.reader(io.StringIO(apply_filter(record, CSV, "$[0:]").decode()))) == fields
