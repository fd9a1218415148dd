#!/bin/sh
# Bench-only virtualenv for the reference systems (never .venv): sagemaker-inference + multi-model-server
# (serve_bench.py) and SageMaker Python SDK v2 (emulator_bench.py). Also needs: java (openjdk), wrk, nginx,
# and Debian's docker-compose (apt-get install docker-compose) for SDK local mode.
set -eu
VENV=${BENCH_VENV:-/tmp/bench-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "sagemaker-inference==1.10.1" multi-model-server onnxruntime numpy "sagemaker<3" py-spy
echo "$VENV/bin/python"
