"""The checks of ``smbyoc validate`` that read an image without running it, how the suite chooses which checks
apply, and its bad-input errors. Images are described by hand (:class:`ImageFacts`); the suite's selection runs
against a stand-in engine that can only be inspected (it starts nothing: every check that would is n/a)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.cli.validate_cmd import parse_size
from smbyoc.errors import ConfigError
from smbyoc.validate.checks import ALL_CHECKS, SERVING_CHECKS, TRAINING_CHECKS
from smbyoc.validate.image import (
    ECR_MAX_LAYER_BYTES,
    ImageFacts,
    check_entrypoint,
    check_platform,
    check_size,
    check_user,
    instance_arch,
)
from smbyoc.validate.suite import ValidateOptions, container_instance_type, detect_kinds, read_payload, validate_image

TRAIN, SERVE, BOTH = frozenset({"train"}), frozenset({"serve"}), frozenset({"train", "serve"})


def facts(**kwargs: Any) -> ImageFacts:
    return ImageFacts(ref="img:1", **kwargs)


# --------------------------------------------------------------------------------------------- inspect
def test_facts_come_from_docker_inspect_and_history_oldest_layer_first() -> None:
    attrs = {"Id": "sha256:1", "Os": "linux", "Architecture": "arm64", "Variant": "v8", "Size": 1234,
             "Config": {"User": "1000", "Entrypoint": ["/bin/entry"], "Cmd": None, "Env": ["A=1"],
                        "Labels": {"k": "v"}}}
    history = [{"CreatedBy": "newest", "Size": 2}, {"CreatedBy": "oldest", "Size": 1}]
    f = ImageFacts.from_attrs("img:1", attrs, history)
    assert (f.platform, f.size, f.user, f.entrypoint, f.cmd) == ("linux/arm64/v8", 1234, "1000", ("/bin/entry",), None)
    assert f.history == (("oldest", 1), ("newest", 2)) and f.env_value("A") == "1" and f.env_value("B") is None


# -------------------------------------------------------------------------------------------- platform
@pytest.mark.parametrize(("arch", "kinds", "instance", "status", "says"), [
    ("amd64", BOTH, None, "pass", "every x86 instance family"),
    ("arm64", SERVE, None, "pass", "Graviton hosting families only"),
    ("arm64", TRAIN, None, "fail", "cannot train"),
    ("amd64", SERVE, "ml.c7g.xlarge", "fail", "Graviton (linux/arm64) instance"),
    ("amd64", SERVE, "ml.c8g.large", "fail", "Graviton"),  # a Graviton family missing from the instance table
    ("arm64", SERVE, "ml.m6g.large", "pass", "matches ml.m6g.large"),
    ("arm64", SERVE, "ml.m5.large", "fail", "an x86 (linux/amd64) instance"),
    ("amd64", TRAIN, "ml.m5.large", "pass", "matches"),
    ("amd64", BOTH, "ml.c6g.large", "fail", "none for training"),
    ("amd64", SERVE, "local", "pass", "every x86"),
    ("386", SERVE, None, "fail", "linux/386"),
])
def test_platform_against_the_instance_family(arch: str, kinds: frozenset[str], instance: str | None, status: str,
                                              says: str) -> None:
    result = check_platform(facts(architecture=arch), kinds, instance)
    assert result.status == status and says in result.detail, result.line()


def test_only_linux_images_run_and_unknown_instance_types_are_refused() -> None:
    assert check_platform(facts(os="windows"), SERVE, None).failed
    assert instance_arch("ml.r8g.large") == "arm64" and instance_arch("ml.g5.xlarge") == "amd64"
    with pytest.raises(ConfigError, match="ml.m5.huge"):
        instance_arch("ml.m5.huge")


# ------------------------------------------------------------------------------------------------ size
def test_size_passes_without_a_limit_and_notes_the_serverless_limit_for_serving_images() -> None:
    small = facts(size=300 * 1024**2, history=(("", 200 * 1024**2), ("RUN x", 100 * 1024**2)))
    result = check_size(small, SERVE, None)
    assert result.passed and "300.0 MiB uncompressed, 2 layers, largest 200.0 MiB" in result.detail
    assert "fits serverless endpoints (10 GiB)" in result.detail
    big = facts(size=11 * 1024**3, history=(("", 11 * 1024**3),))
    assert "too large for serverless endpoints" in check_size(big, SERVE, None).detail
    assert "serverless" not in check_size(big, TRAIN, None).detail and check_size(big, TRAIN, None).passed


def test_size_fails_over_the_given_limit_or_over_ecrs_layer_limit() -> None:
    image = facts(size=500, history=(("", 500),))
    assert check_size(image, SERVE, 499).failed and "--max-image-size" in check_size(image, SERVE, 499).detail
    assert check_size(image, SERVE, 500).passed
    huge_layer = facts(size=ECR_MAX_LAYER_BYTES + 1, history=(("", 10), ("COPY weights", ECR_MAX_LAYER_BYTES + 1)))
    result = check_size(huge_layer, TRAIN, None)
    assert result.failed and "layer 2" in result.detail and "52,000 MiB" in result.detail


# ------------------------------------------------------------------------------------- user, entrypoint
@pytest.mark.parametrize(("user", "ok"), [("", True), ("root", True), ("0", True), ("0:0", True), ("root:staff", True),
                                          ("nobody", False), ("1000:1000", False), ("sagemaker-user", False)])
def test_user(user: str, ok: bool) -> None:
    assert check_user(facts(user=user)).passed is ok


@pytest.mark.parametrize(("entrypoint", "ok"), [
    (None, True), (("/opt/smbyoc/bin/entrypoint",), True), (("python3", "-m", "app"), True),
    (("/bin/sh", "-c", "python3 serve.py"), False), (("/bin/sh", "-c", "exec serve"), False),
    (("/bin/bash", "-c", "train"), False), (("/bin/sh", "/opt/entry.sh"), True),
])
def test_entrypoint_must_be_exec_form(entrypoint: tuple[str, ...] | None, ok: bool) -> None:
    result = check_entrypoint(facts(entrypoint=entrypoint))
    assert result.passed is ok, result.line()


# ------------------------------------------------------------------------------------------------ kind
class _NoContainers:
    def create(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no container may be started here")


class StandIn:
    """An engine that can only be inspected; ``probe`` is what the PATH probe container would print."""

    def __init__(self, attrs: dict[str, Any], probe: str | None = None, arch: str = "x86_64") -> None:
        self.image = type("Image", (), {"attrs": attrs, "history": lambda _self: [{"CreatedBy": "", "Size": 1}]})()
        self._arch = arch
        self.images = self
        self.containers: Any = _NoContainers() if probe is None else _Probe(probe)

    def get(self, name: str) -> Any:
        return self.image

    def info(self) -> dict[str, str]:
        return {"Architecture": self._arch}


class _Probe:
    def __init__(self, output: str) -> None:
        self.output = output
        self.calls: list[dict[str, Any]] = []

    def create(self, image: str, **kwargs: Any) -> Any:
        self.calls.append({"image": image, **kwargs})
        output = self.output

        class Container:
            def start(self) -> None: ...

            def wait(self, timeout: float) -> dict[str, int]:
                return {"StatusCode": 0}

            def logs(self, **kwargs: Any) -> bytes:
                return output.encode()

            def kill(self) -> None: ...

            def remove(self, **kwargs: Any) -> None: ...

        return Container()


def test_kind_comes_from_the_option_then_the_label_then_cmd() -> None:
    engine = StandIn({})
    assert detect_kinds(engine, facts(labels={"org.smbyoc.kind": "serve"}), "both")[0] == BOTH
    kinds, result = detect_kinds(engine, facts(labels={"org.smbyoc.kind": "train"}, cmd=("serve",)), None)
    assert kinds == TRAIN and "label org.smbyoc.kind=train" in result.detail
    kinds, result = detect_kinds(engine, facts(entrypoint=("/entry",), cmd=("serve",)), None)
    assert kinds == SERVE and "CMD ['serve']" in result.detail


def test_without_an_entrypoint_the_image_path_is_probed_in_a_throwaway_container() -> None:
    engine = StandIn({}, probe="train=/opt/program/train\nserve=/opt/program/serve\n")
    kinds, result = detect_kinds(engine, facts(cmd=("/bin/bash",)), None)
    assert kinds == BOTH and result.passed and "serve at /opt/program/serve" in result.detail
    call = engine.containers.calls[0]
    assert call["entrypoint"][:2] == ["/bin/sh", "-c"] and call["network_disabled"] is True
    assert call["labels"]["com.smbyoc.owner"] == "smbyoc"  # found and removed by the sweep if we are killed


def test_an_image_that_cannot_be_told_apart_fails_the_kind_check_naming_the_option() -> None:
    kinds, result = detect_kinds(StandIn({}), facts(entrypoint=("/dispatch",)), None)
    assert kinds == frozenset() and result.failed and "give --kind train, serve or both" in result.detail
    kinds, result = detect_kinds(StandIn({}, probe=""), facts(cmd=("python3",)), None)
    assert kinds == frozenset() and "no `train` or `serve` on the image's PATH" in result.detail


# ------------------------------------------------------------------------------------- check selection
def image_attrs(arch: str = "amd64", **config: Any) -> dict[str, Any]:
    return {"Id": "sha256:0123456789abcdef0123", "Os": "linux", "Architecture": arch, "Size": 10,
            "Config": {"Env": ["PATH=/usr/bin"], **config}}


def test_checks_that_do_not_apply_are_na_with_the_reason_and_skipped_ones_say_so() -> None:
    engine = StandIn(image_attrs(Labels={"org.smbyoc.kind": "serve"}))
    report = validate_image("img:1", client=engine, options=ValidateOptions(skip=SERVING_CHECKS))
    assert [r.name for r in report.results] == list(ALL_CHECKS)
    by_name = {r.name: r for r in report.results}
    assert all(by_name[n].status == "n/a" and "does not train" in by_name[n].detail for n in TRAINING_CHECKS)
    assert all(by_name[n].detail == "skipped (--skip)" for n in SERVING_CHECKS)
    assert report.ok and report.kinds == ("serve",)


def test_an_image_for_another_architecture_is_only_read_not_run() -> None:
    engine = StandIn(image_attrs("arm64", Labels={"org.smbyoc.kind": "serve"}), arch="x86_64")
    report = validate_image("img:1", client=engine, instance_type="ml.c7g.large")
    assert report.result("platform").passed
    for name in SERVING_CHECKS:
        assert "does not run on this linux/amd64 Docker Engine" in report.result(name).detail


def test_an_undecidable_image_fails_kind_and_runs_nothing() -> None:
    engine = StandIn(image_attrs(Entrypoint=["/dispatch"]))
    report = validate_image("img:1", client=engine)
    assert [r.name for r in report.failures()] == ["kind"]
    assert "could not tell" in report.result("train-model").detail


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("options", "message"), [
    ({"startup_timeout": 0}, "--startup-timeout 0: must be a positive number"),
    ({"train_stop_timeout": 0.5}, "--train-stop-timeout 0.5: must be at least 1"),
    ({"skip": ("serve-everything",)}, "--skip serve-everything: no such check"),
    ({"max_image_bytes": 0}, "--max-image-size 0"),
    ({"model_data": Path("/no/such/model.tar.gz")}, "--model-data /no/such/model.tar.gz: no such file"),
    ({"channels": (("train", Path("/no/such/dir")),)}, "--channel train=/no/such/dir: no such file"),
])
def test_bad_options_are_refused_before_anything_starts(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_image("img:1", client=StandIn({}), options=ValidateOptions(**options))


@pytest.mark.parametrize(("options", "message"), [
    ({"hyperparameters": {"x": "v" * 2501}}, "hyperparameter 'x': value has 2501 characters"),
    ({"environment": {"1BAD": "x"}}, "environment variable '1BAD'"),
    ({"keep_running_hyperparameters": {"k" * 300: "1"}}, "keys are 1-256 characters"),
])
def test_training_inputs_createtrainingjob_would_refuse_are_refused_before_any_job(options: dict[str, Any],
                                                                                   message: str) -> None:
    engine = StandIn(image_attrs(Labels={"org.smbyoc.kind": "train"}))  # starting a container would raise
    with pytest.raises(ConfigError, match=message):
        validate_image("img:1", client=engine, options=ValidateOptions(**options))


def test_the_payload_must_exist_and_fit_invoke_endpoints_6_mb(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--payload .*missing.csv: no such file"):
        read_payload(tmp_path / "missing.csv")
    big = tmp_path / "big.bin"
    big.write_bytes(b"0" * (6 * 1024 * 1024 + 1))
    with pytest.raises(ConfigError, match=r"6,291,457 bytes; InvokeEndpoint takes at most 6,291,456"):
        read_payload(big)
    small = tmp_path / "ok.csv"
    small.write_bytes(b"1,2\n")
    assert read_payload(small) == b"1,2\n" and read_payload(None) is None


def test_kind_and_instance_type_are_checked() -> None:
    with pytest.raises(ConfigError, match="--kind trains: expected one of train, serve, both"):
        validate_image("img:1", kind="trains", client=StandIn({}))
    with pytest.raises(ConfigError, match="--instance-type ml.q9.large"):
        container_instance_type("ml.q9.large")
    assert container_instance_type(None) == "local"
    if platform.machine() == "x86_64":
        assert container_instance_type("ml.m5.large") == "ml.m5.large"  # its limits
        # Graviton: the platform check reports it; the behaviour runs get no limits (the emulator would refuse
        # to run an amd64 image for it)
        assert container_instance_type("ml.r8g.large") == "local"


@pytest.mark.parametrize(("text", "size"), [("10GiB", 10 * 1024**3), ("500MB", 500 * 1000**2), ("1.5G", 1_500_000_000),
                                            ("4096", 4096), ("2 mib", 2 * 1024**2)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5XB", "-1GB", "0"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="--max-image-size"):
        parse_size(text)


def test_the_cli_names_the_culprit_in_one_line_and_exits_1(tmp_path: Path) -> None:
    from smbyoc.cli import _register, cli

    _register()
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", "img:1", "--payload", str(tmp_path / "none.csv")])
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 1 and last.startswith("Error: --payload "), result.output
    result = runner.invoke(cli, ["validate", "img:1", "--json", str(tmp_path / "no" / "r.json")])
    assert result.exit_code == 1 and "--json" in result.output and "does not exist" in result.output
    result = runner.invoke(cli, ["validate", "img:1", "--max-image-size", "huge"])
    assert result.exit_code == 1 and "--max-image-size huge" in result.output
    result = runner.invoke(cli, ["validate", "img:1", "-H", "epochs"])
    assert result.exit_code == 1 and "--hyperparameter 'epochs': expected KEY=VALUE" in result.output


# -------------------------------------------------------------------------------------------- deadlines
def test_a_group_past_its_deadline_is_stopped_and_its_unfinished_checks_fail(tmp_path: Path) -> None:
    import time

    from smbyoc.validate.context import ValidateContext
    from smbyoc.validate.report import passed as passed_result
    from smbyoc.validate.runner import Group, wait_for

    stopped: list[str] = []

    def hangs(ctx: ValidateContext, record: Any) -> None:
        record(passed_result("serve-ping", "ok"))
        with ctx.canceller.active(lambda: stopped.append("killed")):
            ctx.canceller.cancelled.wait(30)  # a check that would hang until the suite stops it
        record(passed_result("serve-invocations", "reported after the stop: ignored"))

    ctx = ValidateContext(client=None, facts=facts(), work_dir=tmp_path)
    group = Group("serving", ("serve-ping", "serve-invocations", "serve-sigterm"), hangs, 0.5, ctx)
    started = time.monotonic()
    group.start()
    wait_for([group])
    assert time.monotonic() - started < 10 and stopped == ["killed"]
    results = {r.name: r for r in group.finish()}
    assert results["serve-ping"].passed
    for name in ("serve-invocations", "serve-sigterm"):
        assert results[name].failed and results[name].detail == "did not finish within 0.5 s: stopped"


def test_a_group_that_raises_fails_the_checks_it_did_not_reach_with_the_error(tmp_path: Path) -> None:
    from smbyoc.errors import DockerError
    from smbyoc.validate.context import ValidateContext
    from smbyoc.validate.runner import Group, wait_for

    def breaks(ctx: ValidateContext, record: Any) -> None:
        raise DockerError("the Docker Engine refused: no space left on device\nmore")

    group = Group("training", ("train-model",), breaks, 30, ValidateContext(client=None, facts=facts(),
                                                                             work_dir=tmp_path))
    group.start()
    wait_for([group])
    (result,) = group.finish()
    assert result.failed and result.detail == "could not run: the Docker Engine refused: no space left on device"
