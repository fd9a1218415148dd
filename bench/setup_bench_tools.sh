#!/bin/sh
# Host tools the serving benchmarks drive, installed idempotently: nginx (scripts/setup-host-packages) and
# wrk (Debian's package; the load generator of serve_bench.py and worker_classes.py). Benchmarks only:
# no test needs wrk. Prints nothing but errors when everything is present.
set -eu
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/setup-host-packages >/dev/null
if ! command -v wrk >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "setup_bench_tools: wrk missing; run: sudo apt-get install wrk" >&2; exit 1; }
  echo "setup_bench_tools: installing wrk with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends wrk >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends wrk >/dev/null; }
fi
command -v wrk >/dev/null 2>&1 || { echo "setup_bench_tools: wrk still not on PATH" >&2; exit 1; }
