"""Multi-host start-up time: seconds from `local-train` start until every host's container runs `train`.

Uses the fidelity probe image (tests/docker/fidelity_image); run: .venv/bin/python bench/multihost_startup.py
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
TAG = "smbyoc-test/fidelity-probe:latest"
docker.from_env().images.build(path=str(ROOT / "tests/docker/fidelity_image"), tag=TAG,
                               buildargs={"BASE_IMAGE": "smbyoc/base:bookworm"}, rm=True)
for hosts in (1, 2, 4):
    with tempfile.TemporaryDirectory() as work:
        began = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "smbyoc.cli", "local-train", "--image", TAG,
                               "--instance-count", str(hosts), "-H", "action=sleep", "-H", "sleep=0",
                               "--job-name", f"bench-{hosts}", "-o", "out", "--json"],
                              cwd=work, capture_output=True, text=True, check=True)
        total = time.monotonic() - began
        result = json.loads(proc.stdout[proc.stdout.index("{\n"):])
        assert result["TrainingJobStatus"] == "Completed", result
        print(f"{hosts} host(s): {total:.1f} s from CLI start to exit (network, containers, start, wait, "
              "artifacts, cleanup)")
