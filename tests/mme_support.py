"""Model archives for multi-model endpoint tests, written the way sagemaker-inference models are: ``code/inference.py``
with ``model_fn``/``input_fn``/``predict_fn``/``output_fn`` beside the model's own files (a plain module:
``from mme_support import write_handler_model``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

#: A sagemaker-inference handler: each model scales and shifts its input by its own params.json and names itself
#: through a constant baked into its own code (so that two models' code/inference.py never get mixed up).
HANDLER = '''\
import json
import os

TAG = {tag!r}


def model_fn(model_dir):
    {fail}
    with open(os.path.join(model_dir, "params.json")) as f:
        return json.load(f)


def input_fn(input_data, content_type):
    assert content_type == "application/json", content_type
    return json.loads(input_data)


def predict_fn(data, model):
    return [x * model["scale"] + model["offset"] for x in data]


def output_fn(prediction, accept):
    return json.dumps({{"code": TAG, "prediction": prediction}}), "application/json"
'''


def write_handler_model(path: Path, tag: str, scale: float = 1.0, offset: float = 0.0, *, fail: bool = False) -> Path:
    """``path`` (a .tar.gz) holding params.json and code/inference.py; ``fail``: model_fn raises ValueError."""
    files = {
        "params.json": json.dumps({"scale": scale, "offset": offset}).encode(),
        "code/inference.py": HANDLER.format(
            tag=tag, fail='raise ValueError("this model is broken")' if fail else "pass").encode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def expected(tag: str, scale: float, offset: float, data: list[float]) -> dict[str, object]:
    return {"code": tag, "prediction": [x * scale + offset for x in data]}
