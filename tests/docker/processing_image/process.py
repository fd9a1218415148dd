"""Report what the container sees, then do what the arguments ask: ``fail`` (writes /opt/ml/output/message,
exits 3), ``sleep=N`` (sleeps N seconds), ``trickle=N`` (writes output/stream/part-1.txt, waits N seconds, writes
part-2.txt). ``pipe=NAME:PATH`` first reads the named pipe PATH to its end and reports what it carried as
``pipes[NAME]``, with what the input's ``LocalPath`` folder holds."""

import json
import os
import pathlib
import sys
import time

ML = pathlib.Path("/opt/ml")
config = json.loads((ML / "config" / "processingjobconfig.json").read_text())
resource = json.loads((ML / "config" / "resourceconfig.json").read_text())
host = resource["current_host"]
inputs = {}
for item in config["ProcessingInputs"]:
    root = pathlib.Path(item["S3Input"]["LocalPath"])
    inputs[item["InputName"]] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
report = {"argv": sys.argv, "env": {k: v for k, v in os.environ.items() if k.startswith("JOB_")},
          "config": config, "resource": resource, "inputs": inputs,
          "interfaces": sorted(os.listdir("/sys/class/net")),
          "outputs_exist": [pathlib.Path(o["S3Output"]["LocalPath"]).is_dir()
                            for o in config["ProcessingOutputConfig"]["Outputs"]]}
report["pipes"] = {}
for arg in sys.argv[1:]:
    if arg.startswith("pipe="):
        name, _, path = arg[5:].partition(":")
        fifo = pathlib.Path(path)
        deadline = time.monotonic() + 30
        while not fifo.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        report["pipes"][name] = {"is_fifo": fifo.is_fifo(), "data": fifo.read_bytes().decode()}
out = pathlib.Path("/opt/ml/processing/output/report")
if out.is_dir():
    (out / f"{host}.json").write_text(json.dumps(report))
print(f"{host} sees {inputs}", flush=True)
for arg in sys.argv[1:]:
    if arg == "fail":
        (ML / "output" / "message").write_text(f"bad row on {host}")
        sys.exit(3)
    if arg.startswith("sleep="):
        time.sleep(float(arg[6:]))
    if arg.startswith("trickle="):
        stream = pathlib.Path("/opt/ml/processing/output/stream")
        (stream / "part-1.txt").write_text("first")
        time.sleep(float(arg[8:]))
        (stream / "part-2.txt").write_text("second")
