#!/bin/sh
# The README benchmarks, one after the other (about 9 + 3 + 6 minutes on the 2-core dev box).
set -eu
cd "$(dirname "$0")/.."
PY=$(sh bench/setup_bench_venv.sh | tail -1)
uptime
.venv/bin/python bench/serve_bench.py --it-python "$PY" "$@"
uptime
.venv/bin/python bench/worker_classes.py
uptime
.venv/bin/python bench/emulator_bench.py --sdk-python "$PY"
uptime
