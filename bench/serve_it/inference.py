"""sagemaker-inference user module for the serving benchmark: the same ONNX model, run the way smbyoc's
default ONNX handler runs it (one onnxruntime session per worker, 1 intra-op thread with 2 workers on 2 CPUs,
a missing batch dimension added). Input/output use sagemaker-inference's default decoders/encoders."""

import os

import numpy as np
import onnxruntime as ort


def model_fn(model_dir):
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(
        1, (os.cpu_count() or 1) // int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1"))
    )
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        os.path.join(model_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )


def predict_fn(data, session):
    spec = session.get_inputs()[0]
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis, ...]
    return session.run(None, {spec.name: array})[0]
