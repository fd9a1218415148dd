"""Passthrough container of the pipeline hop benchmark (bench/mme_bench.py, part 2), written for the
sagemaker-inference handler contract: the request body goes back unchanged with its Content-Type, so that a
Serial pipeline ``identity -> model`` answers what the model alone answers and the difference is the hop."""


def model_fn(model_dir):
    return "identity"


def transform_fn(model, input_data, content_type, accept):
    return input_data, content_type
