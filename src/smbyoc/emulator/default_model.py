"""The bundled default example's trained model, trained once and cached for ``local-serve``.

The cache key is a hash of the example's files, so editing the example retrains it. The model is trained
with the same backend the endpoint will use (process, or the default train image in Docker mode).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from smbyoc.emulator.job_spec import SDK_PROGRAM_KEY, SDK_SUBMIT_DIR_KEY, ChannelSpec, TrainingJobSpec
from smbyoc.emulator.training_job import TrainingBackend, run_training_job
from smbyoc.environment_variables import SMBYOC_CACHE_DIR
from smbyoc.errors import JobFailedError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(SMBYOC_CACHE_DIR.get() or Path.home() / ".cache" / "smbyoc").expanduser()


def example_digest() -> str:
    from smbyoc.examples import default_example

    example = default_example()
    digest = hashlib.sha256()
    for path in sorted(p for p in example.source_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(example.source_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_model(mode: str, client: Any = None, image: str | None = None) -> Path:
    """Path of the default example's ``model.tar.gz``, training it first when it is not cached."""
    from smbyoc.examples import default_example

    target = cache_dir() / "default-model" / example_digest() / "model.tar.gz"
    if target.is_file():
        return target
    example = default_example()
    code_key = "/opt/ml/code" if mode == "docker" else str(example.source_dir)
    spec = TrainingJobSpec(
        job_name=f"smbyoc-default-model-{os.getpid()}",
        hyperparameters={**example.hyperparameters, SDK_PROGRAM_KEY: json.dumps(example.entry_point),
                         SDK_SUBMIT_DIR_KEY: json.dumps(code_key)},
        channels=tuple(ChannelSpec(name, path) for name, path in example.channels.items()),
    )
    backend: TrainingBackend
    if mode == "docker":
        from smbyoc.emulator.docker_training import DockerTrainingBackend

        assert client is not None and image is not None
        backend = DockerTrainingBackend(client=client, image=image, code_dir=example.source_dir)
    else:
        from smbyoc.emulator.process_backend import ProcessBackend

        backend = ProcessBackend()
    log.info("training the default example's model once (cached in %s)", target.parent)
    work = target.parent / "job"
    result = run_training_job(spec, backend, work)
    if not result.succeeded or result.artifacts is None:
        raise JobFailedError(f"training the default model failed: {result.failure_reason}")
    os.replace(result.artifacts.model.path, target)
    shutil.rmtree(work, ignore_errors=True)
    return target
