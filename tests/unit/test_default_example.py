"""The bundled default example: its API, its dataset, hyperparameter resolution and the inference handler."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smbyoc.examples import DefaultExample, default_example

EXAMPLE = default_example()


def load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"default_example_{name}", EXAMPLE.source_dir / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- API -----------------------------------------------------------------------------------------------


def test_default_example_describes_existing_files() -> None:
    assert isinstance(EXAMPLE, DefaultExample)
    assert (EXAMPLE.source_dir / EXAMPLE.entry_point).is_file()
    assert (EXAMPLE.source_dir / EXAMPLE.inference_entry_point).is_file()
    assert EXAMPLE.entry_point == "train.py"
    assert set(EXAMPLE.channels) == {"train", "validation"}
    for path in EXAMPLE.channels.values():
        assert path.is_dir() and list(path.glob("*.csv"))
    assert json.loads(json.dumps(EXAMPLE.to_dict()))["entry_point"] == "train.py"


def test_default_hyperparameters_are_strings_from_the_schema() -> None:
    schema = EXAMPLE.hyperparameter_schema()
    assert EXAMPLE.hyperparameters == {name: str(spec["default"]) for name, spec in schema.items()}
    assert {"epochs", "learning-rate", "batch-size", "hidden-units", "seed", "checkpoint-every"} <= set(schema)
    for spec in schema.values():
        assert spec["type"] in {"int", "float", "str"}
        assert isinstance(spec["description"], str) and spec["description"]


def test_schema_is_accepted_by_smbyocs_typed_hyperparameters() -> None:
    # the in-image `train` runtime checks the code dir's hyperparameters.schema.json before starting train.py
    from smbyoc.hyperparameter_schema import coerce, load_schema

    schema = load_schema(EXAMPLE.schema_file)
    defaults = {name: spec["default"] for name, spec in EXAMPLE.hyperparameter_schema().items()}
    assert coerce(schema, EXAMPLE.hyperparameters) == defaults
    assert coerce(schema, {"epochs": "3", "sagemaker_program": '"train.py"'})["epochs"] == 3


def test_dataclass_is_frozen() -> None:
    with pytest.raises(AttributeError):
        EXAMPLE.entry_point = "other.py"  # type: ignore[misc]


def test_importing_examples_pulls_in_neither_torch_nor_onnxruntime() -> None:
    code = "import sys, smbyoc.examples; print([m for m in ('torch', 'onnxruntime', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dataset_is_small_and_well_formed() -> None:
    files = [p for p in (EXAMPLE.source_dir / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    headers, labels = set(), set()
    for path in files:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        headers.add(tuple(rows[0]))
        assert all(len(row) == len(rows[0]) for row in rows)
        labels |= {row[-1] for row in rows[1:]}
        assert all(float(v) == float(v) for row in rows[1:] for v in row[:-1])
    assert len(headers) == 1 and next(iter(headers))[-1] == "label"
    assert len(labels) == 4


def test_make_dataset_reproduces_the_committed_data(tmp_path: Path) -> None:
    make_dataset = load_module("make_dataset")
    make_dataset.main(["--out", str(tmp_path)])
    for name in ("train/train.csv", "validation/validation.csv"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE.source_dir / "data" / name).read_bytes()


# --- hyperparameters -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train() -> ModuleType:
    return load_module("train")


def resolve(
    train: ModuleType, argv: list[str], environ: dict[str, str] | None = None, hp_file: Path | None = None
) -> dict[str, Any]:
    hp: dict[str, Any] = train.resolve_hyperparameters(
        argv, environ or {}, hp_file or Path("/nonexistent/hyperparameters.json"), train.load_schema()
    )
    return hp


def test_defaults_come_from_the_schema(train: ModuleType) -> None:
    hp = resolve(train, [])
    assert hp == {name: spec["default"] for name, spec in EXAMPLE.hyperparameter_schema().items()}


def test_precedence_file_then_sm_hps_then_arguments(train: ModuleType, tmp_path: Path) -> None:
    hp_file = tmp_path / "hyperparameters.json"
    raw = {"epochs": "3", "batch-size": "16", "label-column": '"target"', "sagemaker_program": '"x"'}
    hp_file.write_text(json.dumps(raw))
    hp = resolve(train, [], hp_file=hp_file)
    assert (hp["epochs"], hp["batch-size"], hp["label-column"]) == (3, 16, "target")
    # SM_HPS (what the training toolkit exports) replaces the file entirely
    hp = resolve(train, [], {"SM_HPS": '{"epochs":7,"learning-rate":0.1}'}, hp_file)
    assert (hp["epochs"], hp["learning-rate"], hp["batch-size"]) == (7, 0.1, 64)
    # arguments win, with dashed or underscored names
    hp = resolve(train, ["--epochs", "5", "--learning_rate", "0.05"], {"SM_HPS": '{"epochs":7}'}, hp_file)
    assert (hp["epochs"], hp["learning-rate"]) == (5, 0.05)


def test_training_toolkit_argument_vector_is_accepted(train: ModuleType) -> None:
    # mapping.to_cmd_args: sorted keys, str(value)
    argv = ["--batch-size", "32", "--epochs", "5", "--hidden-units", "16", "--learning-rate", "0.05", "--seed", "7"]
    hp = resolve(train, argv)
    assert (hp["batch-size"], hp["epochs"], hp["hidden-units"], hp["learning-rate"], hp["seed"]) == (32, 5, 16, 0.05, 7)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--epochs", "abc"], {}, "hyperparameter 'epochs': expected int, got 'abc'"),
        (["--epochs", "2.5"], {}, "hyperparameter 'epochs': expected int"),
        (["--epochs", "0"], {}, "hyperparameter 'epochs': 0 is outside [1, 1000000]"),
        (["--learning-rate", "nan"], {}, "hyperparameter 'learning-rate': expected float"),
        (["--bogus", "1"], {}, "unknown argument '--bogus'"),
        ([], {"SM_HPS": '{"dropout": 0.5}'}, "unknown hyperparameter 'dropout'"),
        ([], {"SM_HPS": "{not json"}, "SM_HPS is not valid JSON"),
        ([], {"SM_HPS": '{"epochs": true}'}, "hyperparameter 'epochs': expected int, got True"),
    ],
)
def test_bad_hyperparameters_name_the_culprit(
    train: ModuleType, argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(train.ExampleError, match=None) as info:
        resolve(train, argv, environ)
    assert message in str(info.value)


def test_bad_csv_names_file_and_line(train: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y,label\n1,2,a\n3,oops,b\n")
    with pytest.raises(train.ExampleError, match=r"a\.csv:3: non-numeric"):
        train.read_channel(tmp_path, "label", "train")
    (tmp_path / "a.csv").write_text("x,y,target\n1,2,a\n")
    with pytest.raises(train.ExampleError, match=r"has no label column 'label'"):
        train.read_channel(tmp_path, "label", "train")


def test_checkpoints_are_listed_by_epoch_and_pruned(train: ModuleType, tmp_path: Path) -> None:
    for epoch in (1, 2, 10, 3):
        train.save_checkpoint(tmp_path, {"epoch": epoch})
    assert [e for e, _ in train.checkpoints(tmp_path)] == [3, 10]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "checkpoint-epoch-0011.pt").write_bytes(b"truncated")
    assert train.load_latest_checkpoint(tmp_path)["epoch"] == 10


def test_a_checkpoint_from_another_architecture_is_refused(train: ModuleType, tmp_path: Path) -> None:
    environ = {
        "SAGEMAKER_BASE_DIR": str(tmp_path),
        "SM_CHANNEL_TRAIN": str(EXAMPLE.channels["train"]),
        "SM_CHANNEL_VALIDATION": str(EXAMPLE.channels["validation"]),
    }
    where = train.Locations.from_env(environ)
    hp = resolve(train, ["--epochs", "1", "--hidden-units", "8"])
    assert train.train(hp, where, train.StopFlag())["epoch"] == 1
    assert [e for e, _ in train.checkpoints(tmp_path / "checkpoints")] == [1]
    with pytest.raises(train.ExampleError, match="has hidden_units=8, this run has 16: use the same"):
        train.train(resolve(train, ["--epochs", "2", "--hidden-units", "16"]), where, train.StopFlag())


# --- inference handler (onnxruntime only) -------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built ONNX model with the trained model's interface: softmax(x @ W), 3 features, 2 classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1.0, -1.0], [0.0, 0.0], [-2.0, 2.0]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory = tmp_path_factory.mktemp("model")
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "model.json").write_text(json.dumps({"feature_names": ["a", "b", "c"], "class_names": ["neg", "pos"]}))
    return directory


@pytest.fixture(scope="module")
def inference() -> ModuleType:
    return load_module("inference")


def predict(
    inference: ModuleType, model_dir: Path, body: str | bytes, content_type: str, accept: str | None = None
) -> tuple[str, str]:
    model = inference.model_fn(str(model_dir))
    body_out, content_type_out = inference.output_fn(
        inference.predict_fn(inference.input_fn(body, content_type), model), accept
    )
    return str(body_out), str(content_type_out)


def test_json_rows_records_and_flat_row(inference: ModuleType, model_dir: Path) -> None:
    body, content_type = predict(inference, model_dir, '{"instances": [[1, 0, 0], [0, 0, 1]]}', "application/json")
    assert content_type == "application/json"
    predictions = json.loads(body)["predictions"]
    assert [p["label"] for p in predictions] == ["neg", "pos"]
    assert predictions[0]["probabilities"]["neg"] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    records = '[{"c": 1, "a": 0, "b": 5}, {"a": 3, "b": 0, "c": 0}]'
    predictions = json.loads(predict(inference, model_dir, records, "application/json")[0])["predictions"]
    assert [p["label"] for p in predictions] == ["pos", "neg"]
    flat = predict(inference, model_dir, b"[0, 0, 3]", "application/json; charset=utf-8")[0]
    assert json.loads(flat)["predictions"][0]["label"] == "pos"


def test_csv_in_and_out_with_a_reordered_header_and_extra_column(inference: ModuleType, model_dir: Path) -> None:
    body, content_type = predict(inference, model_dir, "label,c,b,a\nx,0,0,1\ny,1,0,0\n", "text/csv", "text/csv")
    assert content_type == "text/csv"
    lines = body.splitlines()
    assert [line.split(",")[0] for line in lines] == ["neg", "pos"]
    assert sum(float(v) for v in lines[0].split(",")[1:]) == pytest.approx(1.0, rel=1e-5)
    assert predict(inference, model_dir, "1,0,0\n\n0,0,1\n", "text/csv", "text/csv")[0].count("\n") == 2


def test_json_lines_in_and_out_one_line_per_row(inference: ModuleType, model_dir: Path) -> None:
    body = '[1, 0, 0]\n[0, 0, 1]\n\n[0, 1, 0]\n'
    keyed = '{"a": 1, "b": 0, "c": 0}\n{"c": 1, "b": 0, "a": 0}\n{"b": 1, "a": 0, "c": 0}\n'
    assert predict(inference, model_dir, keyed, "application/jsonlines", "application/jsonlines")[0] == predict(
        inference, model_dir, body, "application/jsonlines", "application/jsonlines")[0]
    for content_type in ("application/jsonlines", "application/x-jsonlines", "application/jsonl"):
        out, out_type = predict(inference, model_dir, body, content_type, "application/jsonlines")
        assert out_type == "application/jsonlines"
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 3 and out.endswith("\n")
        csv_out, _ = predict(inference, model_dir, "1,0,0\n0,0,1\n0,1,0\n", "text/csv", "text/csv")
        assert [r["label"] for r in rows] == [line.split(",")[0] for line in csv_out.splitlines()]
        assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, rel=1e-5)


def test_accept_picks_the_first_supported_type(inference: ModuleType, model_dir: Path) -> None:
    assert predict(inference, model_dir, "1,0,0", "text/csv", "image/png, text/csv")[1] == "text/csv"
    assert predict(inference, model_dir, "1,0,0", "text/csv", "*/*")[1] == "application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "message"),
    [
        ("1,0,0", "image/png", None, 415, "unsupported Content-Type 'image/png'"),
        ("1,0,0", "text/csv", "image/png", 406, "unsupported Accept 'image/png'"),
        ("{not json", "application/json", None, 400, "not valid JSON"),
        ('{"rows": [[1, 2, 3]]}', "application/json", None, 400, "needs an 'instances' list"),
        ("[[1, 2]]", "application/json", None, 400, "row 0: 2 values, the model needs 3 (a, b, c)"),
        ('[[1, 2, "x"]]', "application/json", None, 400, "row 0 column 2: expected a number, got 'x'"),
        ('[{"a": 1, "b": 2}]', "application/json", None, 400, "request lacks feature 'c'"),
        ("a,b,c\n1,2,nan\n", "text/csv", None, 400, "row 0 feature 'c': 'nan' is not a finite number"),
        (b"\xff\xfe", "text/csv", None, 400, "not UTF-8"),
        ("[" * 5000 + "]" * 5000, "application/json", None, 400, "nested too deeply"),
        ("1,2,3\r4,5,6\n", "text/csv", None, 400, "not valid CSV: new-line character seen in unquoted field"),
        ("1,2," + "9" * 200_000, "text/csv", None, 400, "not valid CSV: field larger than field limit"),
        ("[[" + "9" * 400 + ", 1, 2]]", "application/json", None, 400, "row 0 column 0: expected a number, got 99"),
        ("[[1e300, 1, 2]]", "application/json", None, 400, "1e+300 is out of the model's float32 range"),
        ("[1, 0, 0]\n{oops\n", "application/jsonlines", None, 400, "line 2 is not valid JSON"),
        ("[1, 0, 0]\n7\n", "application/jsonlines", None, 400, "line 2 is not a list of values or an object"),
        ("\n\n", "application/jsonlines", None, 400, "JSON Lines body has no rows"),
    ],
)
def test_bad_requests_carry_a_status(
    inference: ModuleType, model_dir: Path, body: str, content_type: str, accept: str | None, status: int, message: str
) -> None:
    with pytest.raises(inference.RequestError) as info:
        predict(inference, model_dir, body, content_type, accept)
    assert info.value.status_code == status
    assert message in info.value.message


def test_request_error_is_a_sagemaker_inference_toolkit_error(inference: ModuleType) -> None:
    import sagemaker_inference.errors as errors
    assert issubclass(inference.RequestError, errors.BaseInferenceToolkitError)
