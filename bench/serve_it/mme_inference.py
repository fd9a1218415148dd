"""sagemaker-inference user module of every model of the multi-model benchmark (bench/mme_bench.py), packed
as ``code/inference.py`` into each model.tar.gz so that both servers load the same archives unchanged:
``model_fn`` opens the model's ONNX file in onnxruntime (1 intra-op thread: with many models, one session's
threads per request, as smbyoc's default ONNX handler does with 2 workers on 2 CPUs), reads the optional
``weights.npy`` padding (so that a model costs memory when the benchmark asks for it), ``predict_fn`` runs the
session. Input/output: sagemaker-inference's default decoders/encoders (smbyoc's are the same)."""

import os

import numpy as np
import onnxruntime as ort


def model_fn(model_dir):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        os.path.join(model_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    padding = os.path.join(model_dir, "weights.npy")
    weights = np.load(padding) if os.path.exists(padding) else None
    return session, weights


def predict_fn(data, model):
    session, _weights = model
    spec = session.get_inputs()[0]
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == len(spec.shape) - 1:
        array = array[np.newaxis, ...]
    return session.run(None, {spec.name: array})[0]
