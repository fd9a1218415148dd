"""``local-train --mode docker`` with ``s3://`` code, channel and output: the host downloads (the container never
needs credentials or the endpoint) and uploads model.tar.gz at SageMaker's key. Real engine, real S3 API (moto)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

PROGRAM = """
    import json, os
    from pathlib import Path
    train = Path(os.environ["SM_CHANNEL_TRAIN"])
    files = sorted(p.relative_to(train).as_posix() for p in train.rglob("*") if p.is_file())
    rows = sum(len((train / f).read_text().splitlines()) for f in files)
    Path(os.environ["SM_MODEL_DIR"], "seen.json").write_text(json.dumps({"files": files, "rows": rows}))
"""


def test_docker_mode_reads_and_writes_s3(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         default_images: dict[str, str]) -> None:
    import boto3

    monkeypatch.setenv("SMBYOC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="smbyoc-docker")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        text = textwrap.dedent(PROGRAM).encode()
        info = tarfile.TarInfo("see.py")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    s3.put_object(Bucket="smbyoc-docker", Key="code/sourcedir.tar.gz", Body=buffer.getvalue())
    s3.put_object(Bucket="smbyoc-docker", Key="data/train/a.csv", Body=b"1\n2\n")
    s3.put_object(Bucket="smbyoc-docker", Key="data/train/more/b.csv", Body=b"3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "smbyoc.cli", "local-train", "--image", default_images["train"], "-e", "see.py",
         "-s", "s3://smbyoc-docker/code/sourcedir.tar.gz", "-c", "train=s3://smbyoc-docker/data/train/",
         "-o", "s3://smbyoc-docker/jobs", "--job-name", "s3-docker", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == "s3://smbyoc-docker/jobs/s3-docker/output/model.tar.gz"
    body = s3.get_object(Bucket="smbyoc-docker", Key="jobs/s3-docker/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        seen = json.loads(tar.extractfile("seen.json").read())  # type: ignore[union-attr]
    assert seen == {"files": ["a.csv", "more/b.csv"], "rows": 3}
    s3.head_object(Bucket="smbyoc-docker", Key="jobs/s3-docker/output/output.tar.gz")
