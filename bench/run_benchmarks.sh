#!/bin/sh
# The README benchmarks, one after the other (about 9 + 5 + 6 + 8 minutes on the 2-core dev box).
set -eu
cd "$(dirname "$0")/.."
scripts/setup-bench-tools
PY=$(sh bench/setup_bench_venv.sh | tail -1)
uptime
.venv/bin/python bench/serve_bench.py --it-python "$PY" "$@"
uptime
.venv/bin/python bench/worker_classes.py --model default --reps 5 --duration 5 --concurrency 1 8 32
uptime
.venv/bin/python bench/emulator_bench.py --sdk-python "$PY"
uptime
.venv/bin/python bench/mme_bench.py --it-python "$PY"
uptime
.venv/bin/python bench/front_bench.py
uptime
