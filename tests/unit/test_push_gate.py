"""``smbyoc push`` before anything is pushed: the validate gate (with a fake report, for its argument shapes),
option conflicts and bad input refused offline, each with one line and a non-zero exit.

The real pushes (a registry on loopback, ECR through moto) are in tests/docker/test_push_docker.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result

from helpers import cli_runner, free_port
from smbyoc.cli import _register, cli
from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.push import PushRequest, RepositorySettings
from smbyoc.push.gate import refusal, require_valid
from smbyoc.push.run import check_request, default_tag


@dataclass(frozen=True)
class FakeCheck:
    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class FakeReport:
    results: tuple[FakeCheck, ...]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failures(self) -> tuple[FakeCheck, ...]:
        return tuple(r for r in self.results if r.status == "fail")


def test_gate_passes_a_valid_report_and_forwards_progress() -> None:
    calls: list[tuple[str, object]] = []

    def validate(image: str, *, progress: object = None) -> FakeReport:
        calls.append((image, progress))
        return FakeReport((FakeCheck("ping", "pass", ""), FakeCheck("neuron", "n/a", "not a neuron image")))

    def say(line: str) -> None:
        pass

    require_valid("img:1", progress=say, validate=validate)
    assert calls == [("img:1", say)]


def test_gate_refuses_with_every_failed_check_on_one_line() -> None:
    def validate(image: str, *, progress: object = None) -> FakeReport:
        return FakeReport((FakeCheck("ping", "fail", "GET /ping answered 500\nafter 2 s"),
                           FakeCheck("labels", "pass", ""),
                           FakeCheck("invocations", "fail", "x" * 400)))

    with pytest.raises(SmbyocError) as info:
        require_valid("img:1", validate=validate)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("not pushed: img:1 failed smbyoc validate (2 failed checks: ping (GET /ping "
                              "answered 500 after 2 s); invocations (xxx")
    assert "labels" not in message
    assert "..." in message and len(message) < 400
    assert message.endswith("run `smbyoc validate img:1` for details, or pass --skip-validate")


def test_refusal_with_a_single_check() -> None:
    assert "(1 failed check: serve)" in refusal("i", [FakeCheck("serve", "fail", "")])


@pytest.mark.parametrize(("image", "tag"), [
    ("my-model:1.0", "1.0"), ("my-model", "latest"), ("127.0.0.1:5000/m", "latest"), ("r.io:5000/m:v2", "v2"),
    ("sha256:" + "a" * 64, "latest"), ("abc123", "latest"),
    ("127.0.0.1:5055/m@sha256:" + "a" * 64, "latest"), ("r.io/m:v3@sha256:" + "b" * 64, "v3"),  # (by digest)
])
def test_default_tag_is_the_images(image: str, tag: str) -> None:
    assert default_tag(image) == tag


@pytest.mark.parametrize(("request_", "culprit"), [
    (PushRequest("i", "r.io/m", region="us-east-1"), "--region: only with --ecr"),
    (PushRequest("i", "r.io/m", endpoint_url="http://x"), "--endpoint-url: only with --ecr"),
    (PushRequest("i", "r.io/m", registry_url="http://x"), "--registry-url: only with --ecr"),
    (PushRequest("i", "r.io/m", settings=RepositorySettings(scan_on_push=False)), "--scan-on-push"),
    (PushRequest("i", "r.io/m", settings=RepositorySettings(immutable_tags=True)), "--immutable-tags"),
    (PushRequest("i", "r.io/m", settings=RepositorySettings(lifecycle_policy="{}")), "--lifecycle-policy"),
    (PushRequest("i", "mm", ecr=True, registry_url="127.0.0.1:5000"), "--registry-url: '127.0.0.1:5000' is not a URL"),
    (PushRequest("i", "mm", ecr=True, endpoint_url="http://h/path"), "--endpoint-url: 'http://h/path' is not a URL"),
    (PushRequest("i", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/m1", ecr=True, region="us-east-1"),
     "--region: 'us-east-1' differs from the region of 123456789012.dkr.ecr.eu-west-1.amazonaws.com (eu-west-1)"),
    (PushRequest(" ", "r.io/m"), "IMAGE: empty image name"),
])
def test_offline_conflicts(request_: PushRequest, culprit: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_request(request_)
    assert culprit in str(info.value)


def run_cli(*args: str, input: str | None = None) -> Result:
    _register()
    try:
        runner = cli_runner()
    except TypeError:
        runner = cli_runner()
    return runner.invoke(cli, ["push", *args], input=input)


@pytest.fixture()
def nothing_reachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """Docker and AWS endpoints where nothing listens: an error that is not about them proves the check ran
    before any network call."""
    port = free_port()
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize(("args", "line"), [
    (["img", "--ecr", "-r", "a"], "Error: --repository: ECR repository name 'a' has 1 characters; ECR allows 2-256"),
    (["img", "--ecr", "-r", "Team/x"], "Error: --repository: 'Team' is not an ECR registry"),
    (["img", "--ecr", "-r", "team/x__-y"], "Error: --repository: ECR repository name 'team/x__-y' breaks ECR's"),
    (["img", "-r", "my-model:1"], "Error: --repository: 'my-model:1' names no registry"),
    (["img", "-r", "r.io/m", "--keep-last", "3"], "Error: --lifecycle-policy/--keep-last: only with --ecr"),
    (["img", "-r", "r.io/m", "--password-stdin"], "Error: --password-stdin: needs --username"),
    (["img", "-r", "r.io/m", "-u", "me"], "Error: --username: needs --password-stdin"),
    (["img", "--ecr", "-r", "mm", "-u", "me", "--password-stdin"], "Error: --username: ECR's credentials come from"),
    (["img", "--ecr", "-r", "mm", "--keep-last", "2", "--lifecycle-policy", "p.json"],
     "Error: --keep-last: give --lifecycle-policy FILE or --keep-last N, not both"),
])
def test_cli_refuses_before_any_network_call(nothing_reachable: str, args: list[str], line: str) -> None:
    result = run_cli(*args, input="pw\n")
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.strip().startswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_bad_policy_file_before_any_network_call(nothing_reachable: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [{"rulePriority": 1, "description": "d" * 80, "action": {"type": "expire"},
                                             "selection": {"tagStatus": "tagged", "countType": "imageCountMoreThan",
                                                           "countNumber": 5}}]}))
    result = run_cli("img", "--ecr", "-r", "mm", "--lifecycle-policy", str(policy))
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {policy}: invalid ECR lifecycle policy: rules[0].selection: tagStatus "
                                     "tagged needs tagPrefixList or tagPatternList")


def test_cli_no_credentials_is_one_line_naming_the_chain(nothing_reachable: str, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    result = run_cli("img", "--ecr", "-r", "team/model:1")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert lines == [line for line in result.stderr.splitlines() if line.strip()][-1:]
    assert lines[0].startswith("Error: use ecr: no AWS credentials found in the credential chain (AWS_ACCESS_KEY_ID")
    assert "no Docker Engine" not in result.stderr  # refused before the engine was asked anything



def _report(tmp_path: Path, **fields: object) -> Path:
    data = {"image": "my-model:1", "image_id": "sha256:aaa", "kinds": ["serve"], "ok": True, "results": []}
    data.update(fields)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(data))
    return path


def test_a_passing_report_of_the_same_image_lets_the_push_through(tmp_path: Path) -> None:
    from smbyoc.push.gate import require_valid_report

    require_valid_report("my-model:1", "sha256:aaa", _report(tmp_path))


@pytest.mark.parametrize(("fields", "image_id", "message"), [
    ({"ok": False, "results": [{"name": "ping", "status": "fail"}, {"name": "user", "status": "pass"}]},
     "sha256:aaa", r"failed smbyoc validate \(ping\) according to --validate-report"),
    ({}, "sha256:bbb", r"is for image sha256:aaa \(my-model:1\), not my-model:1 \(sha256:bbb\)"),
])
def test_a_failed_or_foreign_report_refuses(tmp_path: Path, fields: dict[str, object], image_id: str,
                                             message: str) -> None:
    from smbyoc.push.gate import require_valid_report

    with pytest.raises(SmbyocError, match=message):
        require_valid_report("my-model:1", image_id, _report(tmp_path, **fields))


def test_a_report_that_is_not_one_is_one_line(tmp_path: Path) -> None:
    from smbyoc.push.gate import require_valid_report

    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(SmbyocError, match="not a `smbyoc validate --json` report"):
        require_valid_report("m", "sha256:a", tmp_path / "x.json")
    with pytest.raises(SmbyocError, match="no such file"):
        require_valid_report("m", "sha256:a", tmp_path / "absent.json")


def test_validate_report_and_skip_validate_exclude_each_other(tmp_path: Path) -> None:
    _register()
    result = cli_runner().invoke(cli, ["push", "m:1", "-r", "127.0.0.1:5000/m", "--skip-validate",
                                      "--validate-report", str(_report(tmp_path))])
    assert result.exit_code != 0 and "--validate-report" in result.stderr
