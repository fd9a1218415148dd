"""Start sagemaker-inference's model server exactly as its ``start_model_server()`` does, with two
benchmark-only changes: the MMS properties file goes to argv[1] instead of /etc/sagemaker-mms.properties,
and the inference/management addresses bind 127.0.0.1 instead of 0.0.0.0 (loads only target loopback).
Run with the bench venv's python (sagemaker-inference + multi-model-server); blocks until SIGTERM."""

import sys

from sagemaker_inference import model_server

model_server.MMS_CONFIG_FILE = sys.argv[1]
_generate = model_server._generate_mms_config_properties


def _loopback(env, handler_service=None):
    return _generate(env, handler_service).replace("http://0.0.0.0:", "http://127.0.0.1:")


model_server._generate_mms_config_properties = _loopback
model_server.start_model_server()
