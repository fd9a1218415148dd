"""``smbyoc validate`` on real images in a real Docker Engine.

smbyoc's own images and the foreign contract-only image pass (or are n/a where a check honestly does not
apply); the conforming test image passes every check; each image in ``broken_images/<check>/`` fails
exactly its check, for the right reason. The test images are tiny (``FROM smbyoc/base:bookworm`` plus
two small Python programs), built once per session and removed afterwards; short stop timeouts keep the
SIGTERM checks quick.
"""

from __future__ import annotations

import contextlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.validate import ValidateOptions, ValidationReport, validate_image
from smbyoc.validate.checks import ALL_CHECKS, SERVING_CHECKS, TRAINING_CHECKS

pytestmark = pytest.mark.docker

BROKEN_DIR = Path(__file__).parent / "broken_images"
CONTROL = "conforming"
BROKEN = sorted(d.name for d in BROKEN_DIR.iterdir() if (d / "Dockerfile").is_file() and d.name != CONTROL)
#: Short stop timeouts, and hyperparameters that keep the test images' `train` running until stopped.
FAST: dict[str, Any] = {"train_stop_timeout": 3.0, "serve_stop_timeout": 3.0, "startup_timeout": 30.0,
        "keep_running_hyperparameters": {"sleep": "30"}}
#: AWS's documented example secret, baked into broken_images/secrets: it must never be printed.
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

#: How each broken image is validated (only the kind it breaks, to keep the run short) and what the failing
#: line must say.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "kind": ({}, "cannot tell whether the image trains or serves"),
    "platform": ({"kind": "serve", "instance_type": "ml.c6g.large"}, "Graviton (linux/arm64) instance"),
    "image-size": ({"kind": "serve"}, "over the limit of"),
    "user": ({"kind": "serve"}, "runs as USER nobody"),
    "entrypoint": ({"kind": "serve"}, "shell form ENTRYPOINT"),
    "secrets": ({"kind": "serve"}, "AWS_SECRET_ACCESS_KEY=wJal…(40 chars)"),
    "train-model": ({"kind": "train"}, "left /opt/ml/model empty"),
    "train-config": ({"kind": "train"}, "train read none of"),
    "train-failure": ({"kind": "train"}, "wrote no /opt/ml/output/failure"),
    "train-sigterm": ({"kind": "train"}, "SIGKILLed"),
    "serve-ping": ({"kind": "serve", "startup_timeout": 6.0}, "did not answer 200 within the startup"),
    "serve-invocations": ({"kind": "serve"}, "Received server error (500)"),
    "serve-payload-limit": ({"kind": "serve"}, "brought the server down"),
    "serve-bind-to-port": ({"kind": "serve"}, "it still listens on 8080"),
    "serve-sigterm": ({"kind": "serve"}, "still running 3 s after SIGTERM"),
}


def test_there_is_a_broken_image_for_every_check() -> None:
    assert sorted(BROKEN) == sorted(ALL_CHECKS) == sorted(CASES)
    for program in (BROKEN_DIR / "common").iterdir():  # COPY keeps the mode: `docker run IMAGE train` needs +x
        assert os.access(program, os.X_OK), f"{program} lost its executable bit (git update-index --chmod=+x)"


@pytest.fixture(scope="session")
def validate_images(docker_client: Any, docker_test_prefix: str) -> Iterator[dict[str, str]]:
    """Every image of broken_images/ built once (the directory is the build context of each)."""
    tags: dict[str, str] = {}
    try:
        for name in [CONTROL, *BROKEN]:
            tag = f"{docker_test_prefix}-validate-{name}:latest"
            docker_client.images.build(path=str(BROKEN_DIR), dockerfile=f"{name}/Dockerfile", tag=tag, rm=True,
                                       labels={"com.smbyoc.test": "1"})
            tags[name] = tag
        yield tags
    finally:
        for tag in tags.values():
            with contextlib.suppress(Exception):
                docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("validate") / "sample.csv"
    path.write_text("1.0,2.0,3.0\n", encoding="utf-8")
    return path


def statuses(report: ValidationReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_the_conforming_image_passes_every_check(docker_client: Any, validate_images: dict[str, str],
                                                 payload: Path) -> None:
    report = validate_image(validate_images[CONTROL], payload=payload, client=docker_client,
                            options=ValidateOptions(**FAST))
    assert statuses(report) == {name: "pass" for name in ALL_CHECKS}, "\n".join(report.lines())
    assert report.ok and report.kinds == ("serve", "train")
    assert "train at /opt/program/train" in report.result("kind").detail  # found on the image's PATH


@pytest.mark.parametrize("check", BROKEN)
def test_each_broken_image_fails_exactly_its_check(check: str, docker_client: Any, validate_images: dict[str, str],
                                                   payload: Path) -> None:
    settings, says = CASES[check]
    settings = dict(settings)
    kind = settings.pop("kind", None)
    instance_type = settings.pop("instance_type", None)
    options = {**FAST, **settings}
    if check == "image-size":  # a limit between the conforming image and this one (8 MiB of ballast)
        options["max_image_bytes"] = docker_client.images.get(validate_images[CONTROL]).attrs["Size"] + 4 * 1024**2
    report = validate_image(validate_images[check], kind=kind, payload=payload, instance_type=instance_type,
                            client=docker_client, options=ValidateOptions(**options))
    lines = "\n".join(report.lines())
    assert [r.name for r in report.failures()] == [check], lines
    assert says in report.result(check).detail, lines
    assert not report.ok
    if check == "secrets":
        assert EXAMPLE_SECRET not in lines + json.dumps(report.to_dict()) + report.junit_xml().decode()


def test_a_skipped_serve_ping_is_never_the_failure_of_an_endpoint_that_does_not_start(
        docker_client: Any, validate_images: dict[str, str], payload: Path) -> None:
    report = validate_image(validate_images["serve-ping"], kind="serve", payload=payload, client=docker_client,
                            options=ValidateOptions(**{**FAST, "startup_timeout": 6.0},
                                                    skip=("serve-ping", "serve-sigterm")))
    lines = "\n".join(report.lines())
    assert [r.name for r in report.results].count("serve-ping") == 1 and report.result("serve-ping").status == "n/a"
    assert [r.name for r in report.failures()] == ["serve-invocations"], lines  # the first check still wanted
    assert "did not answer 200 within the startup" in report.result("serve-invocations").detail
    assert report.result("serve-payload-limit").status == "n/a" and not report.ok


def test_a_hung_training_job_fails_its_check_at_the_deadline(docker_client: Any,
                                                            validate_images: dict[str, str]) -> None:
    report = validate_image(validate_images[CONTROL], kind="train", client=docker_client,
                            options=ValidateOptions(hyperparameters={"sleep": "60"}, timeout=2, train_stop_timeout=3,
                                                    skip=("train-failure", "train-sigterm")))
    result = report.result("train-model")
    assert result.failed and "MaxRuntimeExceeded" in result.detail and result.seconds < 30, result.line()


def test_smbyoc_train_image_passes(docker_client: Any) -> None:
    from smbyoc.images.defaults import ensure_default_image

    image = ensure_default_image(docker_client, "train")
    report = validate_image(image, client=docker_client, options=ValidateOptions(train_stop_timeout=30.0))
    expected = {**{n: "pass" for n in ALL_CHECKS}, **{n: "n/a" for n in SERVING_CHECKS}}
    assert statuses(report) == expected, "\n".join(report.lines())
    assert "FailureReason" in report.result("train-failure").detail
    assert "hyperparameters.json" in report.result("train-config").detail


def test_smbyoc_serve_image_passes(docker_client: Any) -> None:
    from smbyoc.images.defaults import ensure_default_image

    image = ensure_default_image(docker_client, "serve")
    report = validate_image(image, client=docker_client, options=ValidateOptions(serve_stop_timeout=30.0))
    expected = {**{n: "pass" for n in ALL_CHECKS}, **{n: "n/a" for n in TRAINING_CHECKS}}
    assert statuses(report) == expected, "\n".join(report.lines())
    assert report.result("serve-payload-limit").detail.startswith("413")  # nginx refuses the body itself


def test_the_foreign_image_passes(docker_client: Any, foreign_image: str, payload: Path) -> None:
    report = validate_image(foreign_image, payload=payload, client=docker_client,
                            options=ValidateOptions(fail_hyperparameters={"fail": "validate"},
                                                    **FAST))
    assert statuses(report) == {name: "pass" for name in ALL_CHECKS}, "\n".join(report.lines())
    assert "ForeignError: asked to fail: validate" in report.result("train-failure").detail


def test_the_foreign_image_cannot_be_made_to_fail_by_default_so_train_failure_is_na(
        docker_client: Any, foreign_image: str) -> None:
    only = ("train-failure",)
    report = validate_image(foreign_image, kind="train", client=docker_client,
                            options=ValidateOptions(skip=tuple(n for n in TRAINING_CHECKS if n not in only)))
    result = report.result("train-failure")
    assert result.status == "n/a" and "--fail-hyperparameter" in result.detail, result.line()
    assert report.ok


def test_the_cli_prints_one_line_per_check_writes_junit_and_json_and_exits_1(
        validate_images: dict[str, str], tmp_path: Path) -> None:
    from smbyoc.cli import _register, cli

    _register()
    junit, as_json = tmp_path / "validate.xml", tmp_path / "validate.json"
    result = CliRunner().invoke(cli, ["validate", validate_images["user"], "--kind", "serve", "-q",
                                      "--serve-stop-timeout", "3", "--junit", str(junit), "--json", str(as_json)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(ALL_CHECKS) + 1 and "FAILED (" in lines[-1], result.output
    assert any(line.startswith("FAIL user ") for line in lines), result.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == str(len(ALL_CHECKS))
    data = json.loads(as_json.read_text(encoding="utf-8"))
    assert data["ok"] is False and [r["name"] for r in data["results"] if r["status"] == "fail"] == ["user"]
