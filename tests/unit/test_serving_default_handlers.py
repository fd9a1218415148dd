"""The default ONNX model's conversion of request data to its inputs' dtypes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import write_linear_onnx
from smbyoc.serving.errors import InputError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    from smbyoc.serving.default_handlers import OnnxModel

    return OnnxModel(write_linear_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx"), 1)


def test_a_finite_value_beyond_float32_is_refused_naming_the_input(model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast" in the worker's log either
        with pytest.raises(InputError, match=r"input 'x': a value is out of float32's range"):
            model.predict([[1e40, 0.0, 0.0]])


def test_values_within_range_and_explicit_infinities_pass(model) -> None:
    assert model.predict([[3e38, 0.0, 0.0]]).shape == (1, 2)
    assert np.isinf(model.predict(np.array([[np.inf, 0.0, 0.0]]))).any()


def test_an_integer_too_large_for_the_input_is_refused(model) -> None:
    with pytest.raises(InputError, match=r"input 'x': cannot convert the request data to float32"):
        model.predict([[10**400, 0, 0]])


def test_one_record_without_the_batch_dimension_is_batched(model) -> None:
    assert model.predict([1.0, 2.0, 3.0]).shape == (1, 2)


def test_missing_inputs_by_name_are_named(model) -> None:
    with pytest.raises(InputError, match="missing model inputs: x"):
        model.predict({"y": [[1.0, 2.0, 3.0]]})


def test_complex_values_are_refused(model) -> None:
    with pytest.raises(InputError, match="complex values for a float32 input"):
        model.predict(np.array([[1j, 0, 0]]))


def test_the_model_file_is_a_path(tmp_path: Path) -> None:
    from smbyoc.serving.default_handlers import load_default_model

    write_linear_onnx(tmp_path / "model.onnx")
    assert load_default_model(tmp_path, 1).predict([[1.0, 2.0, 3.0]]).shape == (1, 2)
