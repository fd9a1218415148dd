"""Wire format, reserved keys, and typed hyperparameters (load_schema / coerce)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from smbyoc import hyperparameters as hp
from smbyoc.errors import ConfigError, HyperparameterError
from smbyoc.hyperparameters import HyperparameterSpec, Schema, coerce, load_schema

# ------------------------------------------------------------------------------------- wire format


@pytest.mark.parametrize(
    ("wire", "decoded"),
    [("10", 10), ("0.001", 0.001), ('"adam"', "adam"), ("adam", "adam"), ("true", True), ("True", "True"),
     ("null", None), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ("{'a': 1}", "{'a': 1}"), ("", ""),
     (" 7 ", 7)],
)
def test_decode_value_like_the_toolkit(wire: str, decoded: Any) -> None:
    assert hp.decode_value(wire) == decoded


def test_split_reserved_and_framework_keys() -> None:
    decoded = hp.decode({"lr": "0.1", "sagemaker_program": '"t.py"', "sagemaker_mpi_enabled": "true",
                         "_tuning_objective_metric": '"loss"', "default_user_module_name": '"m"',
                         "sagemaker_custom_thing": "1", "Sagemaker_upper": "2"})
    parts = hp.split(decoded)
    assert parts.user == {"lr": 0.1, "Sagemaker_upper": 2}
    assert parts.framework == {"sagemaker_mpi_enabled": True, "sagemaker_custom_thing": 1}
    assert set(parts.sagemaker) == {"sagemaker_program", "sagemaker_mpi_enabled", "_tuning_objective_metric",
                                    "default_user_module_name", "sagemaker_custom_thing"}


@pytest.mark.oracle
def test_reserved_tuple_is_the_toolkits() -> None:
    from sagemaker_training import params

    assert hp.RESERVED_HYPERPARAMETERS == params.SAGEMAKER_HYPERPARAMETERS
    assert params.SAGEMAKER_PREFIX == hp.SAGEMAKER_PREFIX


def test_read_file(tmp_path: Path) -> None:
    assert hp.read_hyperparameters_file(tmp_path / "absent.json") == {}
    path = tmp_path / "h.json"
    path.write_text('{"a": "1", "b": "\\"x\\""}')
    assert hp.read_hyperparameters_file(path) == {"a": "1", "b": '"x"'}


def test_validate_wire_names_key() -> None:
    with pytest.raises(ConfigError, match=r"f\.json: epochs: value 3 is a JSON number"):
        hp.validate_wire({"epochs": 3}, source="f.json")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_sdk_encoding_round_trips(values: dict[str, Any]) -> None:
    assert hp.decode(hp.encode(values)) == values


# ------------------------------------------------------------------------------------------ schema

EXAMPLE = {
    "epochs": {"type": "int", "default": 10, "minimum": 1},
    "optimizer": {"type": "str", "choices": ["sgd", "adam"]},
    "lr": {"type": "float", "required": True},
    "verbose": {"type": "bool", "default": False},
    "layers": {"type": "list", "items": "int", "default": [64]},
    "extra": {"type": "dict"},
    "seed": "int",
}


@pytest.fixture
def schema(tmp_path: Path) -> Schema:
    path = tmp_path / "hyperparameters.schema.json"
    path.write_text(json.dumps(EXAMPLE))
    return load_schema(path)


def test_plain_strings(schema: Schema) -> None:
    hps = {"epochs": "5", "optimizer": "adam", "lr": "0.01", "verbose": "True", "layers": "32,16",
           "extra": "a=1,b=x"}
    assert coerce(schema, hps) == {"epochs": 5, "optimizer": "adam", "lr": 0.01, "verbose": True,
                                   "layers": [32, 16], "extra": {"a": "1", "b": "x"}}


def test_sdk_json_encoded(schema: Schema) -> None:
    hps = hp.encode({"epochs": 5, "optimizer": "adam", "lr": 0.01, "verbose": True, "layers": [32, 16],
                     "extra": {"a": 1}})
    assert coerce(schema, hps) == {"epochs": 5, "optimizer": "adam", "lr": 0.01, "verbose": True,
                                   "layers": [32, 16], "extra": {"a": 1}}


def test_generic_estimator_str_encoding(schema: Schema) -> None:
    hps = hp.encode({"epochs": 5, "optimizer": "adam", "lr": 1e-5, "verbose": False, "layers": [32, 16],
                     "extra": {"a": 1}}, json_encode=False)
    assert hps["extra"] == "{'a': 1}" and hps["verbose"] == "False"
    assert coerce(schema, hps) == {"epochs": 5, "optimizer": "adam", "lr": 1e-5, "verbose": False,
                                   "layers": [32, 16], "extra": {"a": 1}}


def test_already_decoded_values_give_the_same_result(schema: Schema) -> None:
    wire = hp.encode({"epochs": 5, "optimizer": "sgd", "lr": 2, "layers": [1]})
    assert coerce(schema, hp.decode(wire)) == coerce(schema, wire)


def test_defaults_and_optional_without_default(schema: Schema) -> None:
    result = coerce(schema, {"lr": "1"})
    assert result == {"epochs": 10, "lr": 1.0, "verbose": False, "layers": [64]}
    result["layers"].append(1)
    assert coerce(schema, {"lr": "1"})["layers"] == [64]  # defaults are copied


def test_every_problem_in_one_error(schema: Schema) -> None:
    with pytest.raises(HyperparameterError) as info:
        coerce(schema, {"epochs": "0", "optimizer": "rmsprop", "verbose": "maybe", "layers": "1,x",
                        "extra": "[1]", "seed": "1.5", "learning_rate": "0.1", "epoch": "3"})
    problems = dict(info.value.problems)
    assert set(problems) == {"epochs", "optimizer", "lr", "verbose", "layers", "extra", "seed", "learning_rate",
                             "epoch"}
    assert problems["epochs"].startswith("must be at least 1")
    assert problems["optimizer"].startswith('must be one of "sgd", "adam"')
    assert problems["lr"] == "required but not given"
    assert problems["verbose"].startswith("expected a boolean")
    assert problems["layers"].startswith("item 1: expected an integer")
    assert problems["seed"] == "expected an integer (got '1.5')"
    assert problems["learning_rate"] == "not declared in the hyperparameter schema"
    assert problems["epoch"] == "not declared in the hyperparameter schema; did you mean 'epochs'?"
    message = str(info.value)
    assert message.startswith("9 invalid hyperparameters: ") and "epochs: must be at least 1" in message


@pytest.mark.parametrize("text", ["true", "True", "TRUE", "1", "yes", "on", '"true"', "t", "Y"])
def test_true_strings(text: str) -> None:
    assert hp.parse_bool(text) is True


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off", '"False"', 0, False, "f", "N"])
def test_false_values(value: Any) -> None:
    assert hp.parse_bool(value) is False


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_int_in_every_form(n: int) -> None:
    schema = Schema({"n": HyperparameterSpec("int")})
    for form in (n, str(n), json.dumps(n), json.dumps(str(n)), float(n), f" {n} "):
        assert coerce(schema, {"n": form}) == {"n": n}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_in_every_form(x: float) -> None:
    schema = Schema({"x": HyperparameterSpec("float")})
    for form in (x, str(x), json.dumps(x), json.dumps(str(x))):
        assert coerce(schema, {"x": form}) == {"x": x}


@given(st.text(max_size=30))
def test_str_in_every_form(s: str) -> None:
    # A decoded string that itself looks like a JSON string literal is unquoted once more (documented).
    assume(not (len(s.strip()) >= 2 and s.strip()[0] == s.strip()[-1] == '"'))
    schema = Schema({"s": HyperparameterSpec("str")})
    assert coerce(schema, {"s": json.dumps(s)}) == {"s": s}  # SDK framework estimator
    assert coerce(schema, {"s": hp.decode_value(json.dumps(s))}) == {"s": s}  # decoded by TrainingEnv


def test_str_keeps_exact_text_of_the_wire_format() -> None:
    schema = Schema({"v": HyperparameterSpec("str"), "w": HyperparameterSpec("str")})
    assert coerce(schema, {"v": "0.10", "w": "null"}) == {"v": "0.10", "w": "null"}
    assert coerce(schema, {"v": 0.1, "w": True}) == {"v": "0.1", "w": "true"}


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-Infinity", "x", True])
def test_float_rejects(value: Any) -> None:
    with pytest.raises(HyperparameterError, match="x: expected a"):
        coerce(Schema({"x": HyperparameterSpec("float")}), {"x": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("[1, 2]", [1, 2]), ("a, b ,c", ["a", "b", "c"]), ("", []), ("('a', 'b')", ["a", "b"]), (5, [5]),
     ('"[\\"x\\"]"', ["x"]), ([3], [3])],
)
def test_list_forms(value: Any, expected: list[Any]) -> None:
    assert coerce(Schema({"l": HyperparameterSpec("list")}), {"l": value}) == {"l": expected}


def test_nullable() -> None:
    schema = Schema({"a": HyperparameterSpec("int", nullable=True), "b": HyperparameterSpec("int")})
    assert coerce(schema, {"a": "null"}) == {"a": None}
    with pytest.raises(HyperparameterError, match="b: must not be null"):
        coerce(schema, {"a": None, "b": None})


def test_reserved_keys_are_skipped_and_unknown_allowed(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"allow_unknown": True, "hyperparameters": {"epochs": {"type": "integer"}}}))
    schema = load_schema(path)
    assert schema.allow_unknown
    wire = {"epochs": "3", "other": '"x"', "sagemaker_program": '"t.py"', "_tuning_objective_metric": '"m"'}
    assert coerce(schema, wire) == {"epochs": 3, "other": '"x"'}


def test_flat_schema_with_a_hyperparameter_called_hyperparameters(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"hyperparameters": {"type": "str"}}))
    schema = load_schema(path)
    assert not schema.allow_unknown
    assert coerce(schema, {"hyperparameters": "x"}) == {"hyperparameters": "x"}


def test_python_declaration() -> None:
    schema = Schema({"epochs": HyperparameterSpec("int", default=3, maximum=5),
                     "mode": HyperparameterSpec("string", choices=("a", "b"), default="a")})
    assert schema.coerce({"epochs": "4"}) == {"epochs": 4, "mode": "a"}
    with pytest.raises(HyperparameterError, match="epochs: must be at most 5"):
        schema.coerce({"epochs": "6"})


def test_type_inferred_from_default_and_choices_coerced(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"n": {"default": 2}, "flag": {"default": True},
                                "k": {"type": "int", "choices": ["1", "2"]}}))
    assert coerce(load_schema(path), {"k": '"2"'}) == {"n": 2, "flag": True, "k": 2}


@pytest.mark.parametrize(
    ("declaration", "match"),
    [
        ({"x": {"type": "complex"}}, "x: type 'complex' is not one of"),
        ({"x": {"type": "int", "default": "ten"}}, "x: default .ten. does not fit the declaration: expected an int"),
        ({"x": {"type": "int", "default": 0, "minimum": 1}}, "x: default 0 does not fit.*at least 1"),
        ({"x": {"type": "int", "required": True, "default": 1}}, "x: a required hyperparameter cannot have a default"),
        ({"x": {"type": "str", "minimum": 1}}, "x: minimum must be a number and is only for int and float"),
        ({"x": {"type": "int", "minimum": 5, "maximum": 1}}, "minimum is larger than maximum"),
        ({"x": {"type": "int", "minimun": 1}}, r"x: unknown declaration keys \['minimun'\]"),
        ({"x": {"type": "int", "choices": ["a"]}}, "x: choice does not fit the type"),
        ({"x": {"type": "int", "choices": []}}, "x: choices must not be empty"),
        ({"x": {"type": "str", "items": "int"}}, "x: items is only for lists"),
        ({"x": {"required": True}}, 'x: "type" is missing'),
        ({"x": 5}, "x: a declaration must be an object or a type name"),
        ({"x": {"type": "int", "required": "yes"}}, "x: required must be true or false"),
        ({"allow_unknown": 1, "hyperparameters": {}}, "allow_unknown: must be true or false"),
        ({"allow_known": True, "hyperparameters": {}}, "unknown top-level keys"),
    ],
)
def test_bad_schema_names_file_and_key(tmp_path: Path, declaration: dict[str, Any], match: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(declaration))
    with pytest.raises(ConfigError, match=match) as info:
        load_schema(path)
    assert str(info.value).startswith(str(path))


def test_schema_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_schema(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_schema(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_schema(tmp_path / "list.json")


def test_deeply_nested_literal_is_rejected_not_crashing() -> None:
    schema = Schema({"d": HyperparameterSpec("dict")})
    with pytest.raises(HyperparameterError, match="d: expected an object"):
        coerce(schema, {"d": "[" * 2400})
    assert math.isclose(coerce(Schema({"f": HyperparameterSpec("float")}), {"f": "1e-3"})["f"], 0.001)
