"""Processing jobs without Docker: the CreateProcessingJob request (merged from a file and flags, checked by
botocore's service model and the emulator's rules), the config files it becomes, sharding, the container's
command for the four override cases, exit messages, the output copier and the job's status.

The containers themselves run in tests/docker/test_local_process_docker.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.cli.process_cmd import parse_inputs, parse_outputs
from smbyoc.emulator import result
from smbyoc.emulator.docker_processing import command_args
from smbyoc.emulator.layout import HostTree
from smbyoc.emulator.pipe_feeder import start_feeders, stop_feeders
from smbyoc.emulator.processing_job import _outcome, input_objects, lay_out_host, read_exit_message
from smbyoc.emulator.processing_outputs import OutputCopier, output_files
from smbyoc.emulator.processing_pipes import (
    DEFAULT_PIPE_PATH,
    PIPE_PATH_ENV,
    check_pipe_paths,
    feeder_pattern,
    fifo_path,
    pipe_pattern,
    pipe_sources,
)
from smbyoc.emulator.processing_request import (
    RequestOverrides,
    anchor_local_paths,
    merge_request,
    request_problems,
    spec_from_request,
)
from smbyoc.emulator.processing_spec import ProcessingInput, ProcessingJobSpec, ProcessingOutput
from smbyoc.emulator.result import HostOutcome
from smbyoc.errors import ConfigError

pytest.importorskip("botocore.validate")

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def request(**changes: Any) -> dict[str, Any]:
    """A complete request in boto3's shape (a real one: s3:// URIs, an ml. instance type)."""
    base: dict[str, Any] = {
        "ProcessingJobName": "prep-1",
        "RoleArn": ROLE,
        "AppSpecification": {"ImageUri": "my-proc:1", "ContainerEntrypoint": ["python3", "/code/p.py"],
                             "ContainerArguments": ["--split", "0.2"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge",
                                                  "VolumeSizeInGB": 30}},
        "ProcessingInputs": [{"InputName": "raw", "S3Input": {
            "S3Uri": "s3://bucket/raw/", "LocalPath": "/opt/ml/processing/input/raw", "S3DataType": "S3Prefix",
            "S3InputMode": "File", "S3DataDistributionType": "ShardedByS3Key"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "clean", "S3Output": {
            "S3Uri": "s3://bucket/clean/", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "Environment": {"MODE": "full"},
        "NetworkConfig": {"EnableNetworkIsolation": True},
    }
    base.update(changes)
    return base


def error_of(req: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        spec_from_request(req, source="job.json")
    return str(info.value)


# -- the request ---------------------------------------------------------------------------------------------


def test_a_real_request_becomes_its_spec_and_back() -> None:
    req = request()
    spec = spec_from_request(req)
    assert (spec.job_name, spec.image, spec.instance_count, spec.instance_type) == ("prep-1", "my-proc:1", 2,
                                                                                     "ml.m5.xlarge")
    assert spec.entrypoint == ("python3", "/code/p.py") and spec.arguments == ("--split", "0.2")
    assert spec.network_isolation and spec.max_runtime_seconds == 600 and spec.environment == {"MODE": "full"}
    assert spec.inputs[0].distribution == "ShardedByS3Key" and spec.inputs[0].relative == "input/raw"
    assert spec.outputs[0].relative == "output"
    rebuilt = spec.request()
    assert request_problems(rebuilt) == []
    assert rebuilt["NetworkConfig"] == {"EnableNetworkIsolation": True}
    assert rebuilt["ProcessingInputs"][0]["S3Input"]["S3Uri"] == "s3://bucket/raw/"


def test_botocore_errors_name_the_file_and_the_field_path() -> None:
    bad = request(ProcessingJobName="bad_name")
    bad["ProcessingInputs"][0]["S3Input"]["S3InputMod"] = "File"
    bad["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3UploadMode"] = "AtTheEnd"
    text = error_of(bad)
    assert text.startswith("job.json: ")
    assert "ProcessingJobName: 'bad_name' does not match the pattern" in text
    assert "ProcessingInputs[0].S3Input.S3InputMod: unknown field (did you mean S3InputMode?)" in text
    assert "ProcessingOutputConfig.Outputs[0].S3Output.S3UploadMode: 'AtTheEnd' is not one of" in text
    missing = request()
    del missing["AppSpecification"]["ImageUri"]
    assert "AppSpecification.ImageUri: required field is missing" in error_of(missing)
    assert "InstanceCount: 0 is below the minimum 1" in error_of(request(ProcessingResources={
        "ClusterConfig": {"InstanceCount": 0, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}}))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: r["ProcessingInputs"][0]["S3Input"].update(LocalPath="/data/raw"),
     "ProcessingInputs[0].S3Input.LocalPath: '/data/raw' must begin with /opt/ml/processing/"),
    (lambda r: r["ProcessingInputs"][0]["S3Input"].update(S3CompressionType="Gzip"),
     "S3CompressionType: Gzip can only be used when Pipe mode is specified"),
    (lambda r: r["ProcessingOutputConfig"]["Outputs"][0].update(OutputName="raw"),
     "Outputs[0].OutputName: 'raw' is already the name of an input or output"),
    (lambda r: r["ProcessingOutputConfig"]["Outputs"][0]["S3Output"].update(LocalPath="/opt/ml/processing/input"),
     "overlaps ProcessingInputs[0].S3Input.LocalPath"),
    (lambda r: r["ProcessingInputs"].append({"InputName": "db", "DatasetDefinition": {
        "LocalPath": "/opt/ml/processing/db", "DataDistributionType": "FullyReplicated"}}),
     "ProcessingInputs[1].DatasetDefinition: Athena/Redshift datasets are not emulated"),
])
def test_rules_beyond_the_shape_are_one_line_each(change: Any, expected: str) -> None:
    req = request()
    change(req)
    text = error_of(req)
    assert expected in text and len(text.splitlines()) == 1


def test_local_paths_and_local_instance_types_stand_where_the_api_wants_s3_and_ml() -> None:
    req = request(ProcessingResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "local",
                                                         "VolumeSizeInGB": 30}})
    req["ProcessingInputs"][0]["S3Input"]["S3Uri"] = "./data"
    req["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] = "file:///tmp/out"
    spec = spec_from_request(req)
    assert spec.instance_type == "local" and spec.inputs[0].uri == "./data"
    req["ProcessingResources"]["ClusterConfig"]["InstanceType"] = "ml.nope.large"
    assert "InstanceType: 'ml.nope.large' is not one of" in error_of(req)


def test_flags_build_a_request_and_override_a_file(tmp_path: Path) -> None:
    built = merge_request(None, RequestOverrides(
        image="img", inputs=[("raw", "./d", None)], outputs=[("out", None, "./o")], arguments=["a"],
        settings=[("S3DataDistributionType", None, "ShardedByS3Key"), ("S3UploadMode", "out", "Continuous")]),
        default_name="gen-1")
    spec = spec_from_request(built)
    assert spec.job_name == "gen-1" and spec.instance_type == "local" and spec.instance_count == 1
    assert spec.inputs[0].local_path == "/opt/ml/processing/input/raw"
    assert spec.inputs[0].distribution == "ShardedByS3Key"
    assert spec.outputs[0].local_path == "/opt/ml/processing/output/out"
    assert spec.outputs[0].upload_mode == "Continuous"
    assert spec.entrypoint is None and spec.arguments == ("a",)

    merged = merge_request(request(), RequestOverrides(
        job_name="other", instance_count=1, max_runtime_seconds=5, network_isolation=False,
        environment={"EXTRA": "1"}, inputs=[("raw", "s3://b/new/", "/opt/ml/processing/in")],
        entrypoint=["bash"]), default_name="unused")
    spec = spec_from_request(merged)
    assert (spec.job_name, spec.instance_count, spec.max_runtime_seconds) == ("other", 1, 5)
    assert not spec.network_isolation and spec.environment == {"MODE": "full", "EXTRA": "1"}
    assert len(spec.inputs) == 1 and spec.inputs[0].uri == "s3://b/new/"
    assert spec.inputs[0].local_path == "/opt/ml/processing/in"
    assert spec.entrypoint == ("bash",) and spec.arguments == ("--split", "0.2")
    with pytest.raises(ConfigError, match="S3UploadMode nope=Continuous: no such output"):
        merge_request(request(), RequestOverrides(settings=[("S3UploadMode", "nope", "Continuous")]),
                      default_name="x")


def test_relative_paths_in_a_request_file_are_read_from_its_folder(tmp_path: Path) -> None:
    req = request()
    req["ProcessingInputs"][0]["S3Input"]["S3Uri"] = "data"
    req["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] = "s3://bucket/clean/"
    anchor_local_paths(req, tmp_path)
    assert req["ProcessingInputs"][0]["S3Input"]["S3Uri"] == str(tmp_path / "data")
    assert req["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == "s3://bucket/clean/"


# -- the files and the container --------------------------------------------------------------------------------


def test_processingjobconfig_has_the_documented_shape() -> None:
    spec = spec_from_request(request())
    config = spec.job_config()
    assert list(config) == ["ProcessingJobArn", "ProcessingJobName", "AppSpecification", "Environment",
                            "NetworkConfig", "ProcessingInputs", "ProcessingOutputConfig", "ProcessingResources",
                            "RoleArn", "StoppingCondition"]
    assert config["ProcessingJobArn"] == "arn:aws:sagemaker:us-east-1:000000000000:processing-job/prep-1"
    assert config["ProcessingInputs"][0]["S3Input"] == {
        "LocalPath": "/opt/ml/processing/input/raw", "S3Uri": "s3://bucket/raw/",
        "S3DataDistributionType": "ShardedByS3Key", "S3DataType": "S3Prefix", "S3InputMode": "File",
        "S3CompressionType": "None", "S3DownloadMode": "StartOfJob"}
    assert config["ProcessingOutputConfig"]["KmsKeyId"] is None
    assert config["ProcessingResources"]["ClusterConfig"] == {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge",
                                                              "VolumeSizeInGB": 30, "VolumeKmsKeyId": None}
    bare = spec_from_request(merge_request(None, RequestOverrides(image="img"), default_name="j"))
    assert bare.job_config()["AppSpecification"] == {"ImageUri": "img", "ContainerEntrypoint": None,
                                                     "ContainerArguments": None}
    assert bare.job_config()["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    resource = spec.resource_config("algo-2")
    assert resource["current_host"] == "algo-2" and resource["hosts"] == ["algo-1", "algo-2"]
    assert resource["network_interface_name"] == "eth0"


def test_the_four_entrypoint_and_argument_cases() -> None:
    assert command_args(None, None) == {}
    assert command_args(("python3", "-v", "/p.py"), None) == {"entrypoint": ["python3", "-v", "/p.py"], "command": []}
    assert command_args(None, ("data-format", "csv")) == {"command": ["data-format", "csv"]}
    assert command_args(("python3",), ("a",)) == {"entrypoint": ["python3"], "command": ["a"]}


def _tree_source(tmp_path: Path, count: int) -> Path:
    source = tmp_path / "src"
    for i in range(count):
        (source / ("deep" if i % 3 == 0 else "")).mkdir(parents=True, exist_ok=True)
        (source / ("deep" if i % 3 == 0 else "") / f"f{i:02d}.csv").write_text(str(i))
    return source


def test_sharded_inputs_split_the_sorted_keys_and_replicated_inputs_do_not(tmp_path: Path) -> None:
    source = _tree_source(tmp_path, 10)
    item = ProcessingInput("raw", "s3://b/raw/", "/opt/ml/processing/raw", source=source,
                           distribution="ShardedByS3Key")
    shares = [[key for key, _ in input_objects(item, i, 3)] for i in range(3)]
    everything = sorted(k for share in shares for k in share)
    assert everything == sorted(p.relative_to(source).as_posix() for p in source.rglob("*.csv"))
    assert all(len(set(a) & set(b)) == 0 for a in shares for b in shares if a is not b)
    assert [len(s) for s in shares] == [4, 3, 3]
    whole = ProcessingInput("raw", "s3://b/raw/", "/opt/ml/processing/raw", source=source)
    assert len(input_objects(whole, 2, 3)) == 10


def test_a_host_tree_holds_configs_its_share_and_empty_outputs(tmp_path: Path) -> None:
    source = _tree_source(tmp_path, 4)
    spec = ProcessingJobSpec(
        job_name="j", image="img", instance_count=2,
        inputs=(ProcessingInput("raw", "s3://b/", "/opt/ml/processing/input/raw", source=source,
                                distribution="ShardedByS3Key"),),
        outputs=(ProcessingOutput("out", "s3://b/o/", "/opt/ml/processing/output/out", destination=tmp_path / "o"),))
    tree = lay_out_host(spec, "algo-2", tmp_path / "algo-2")
    config = json.loads((tree.root / "config" / "processingjobconfig.json").read_text())
    assert config["ProcessingJobName"] == "j"
    assert json.loads((tree.root / "config" / "resourceconfig.json").read_text())["current_host"] == "algo-2"
    got = sorted(p.relative_to(tree.root / "processing").as_posix()
                 for p in (tree.root / "processing").rglob("*") if p.is_file())
    # sorted keys deep/f00.csv, deep/f03.csv, f01.csv, f02.csv: the second host gets the 2nd and the 4th
    assert got == ["input/raw/deep/f03.csv", "input/raw/f02.csv"]
    assert (tree.root / "processing" / "output" / "out").is_dir()
    assert (tree.root / "output").is_dir()


def test_exit_messages_are_joined_in_host_order_and_cut_at_1_kb(tmp_path: Path) -> None:
    trees = [HostTree(h, tmp_path / h) for h in ("algo-1", "algo-2", "algo-3")]
    for tree in trees:
        (tree.root / "output").mkdir(parents=True)
    (trees[0].root / "output" / "message").write_text("one;")
    (trees[2].root / "output" / "message").write_text("three" + "x" * 2000)
    message, problem = read_exit_message(trees)
    assert message is not None and message.startswith("one;three") and len(message) == 1024 and problem is None
    (trees[1].root / "output" / "message").write_bytes(b"\xff\xfe")
    _, problem = read_exit_message(trees)
    assert problem == "ClientError: /opt/ml/output/message of algo-2 is not valid UTF-8"
    assert read_exit_message(trees[:0]) == (None, None)


def test_the_status_follows_the_exit_codes() -> None:
    spec = ProcessingJobSpec(job_name="j", image="i", max_runtime_seconds=5)
    ok = [HostOutcome("algo-1", 0), HostOutcome("algo-2", 0)]
    assert _outcome(spec, ok, False, False, None) == (result.COMPLETED, 0, None)
    failed = [HostOutcome("algo-1", 130, stopped_by_emulator=True), HostOutcome("algo-2", 3)]
    status, code, reason = _outcome(spec, failed, False, False, None)
    assert (status, code) == (result.FAILED, 3)
    assert reason == "AlgorithmError: See job logs for more information (algo-2 exited with status 3)"
    assert _outcome(spec, ok, False, False, "ClientError: x")[0:3:2] == (result.FAILED, "ClientError: x")
    status, code, reason = _outcome(spec, failed, False, True, None)
    assert status == result.STOPPED and code == 1 and reason is not None and reason.startswith("MaxRuntimeExceeded")
    assert _outcome(spec, ok, True, False, None) == (result.STOPPED, 130, None)


# -- outputs ---------------------------------------------------------------------------------------------------


def test_the_copier_copies_changed_files_once_skips_links_and_waits_for_settled_ones(tmp_path: Path) -> None:
    source, destination = tmp_path / "host", tmp_path / "dest"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "sub" / "b.txt").write_text("b")
    (tmp_path / "secret").write_text("not an output")
    os.symlink(tmp_path / "secret", source / "link.txt")
    os.symlink(tmp_path, source / "dirlink")
    assert sorted(output_files(source)) == ["a.txt", "sub/b.txt"]
    copier = OutputCopier([(source, destination)])
    assert copier.sync(settled_only=True) == 0  # first sight: not settled yet
    assert copier.sync(settled_only=True) == 2
    assert (destination / "sub" / "b.txt").read_text() == "b"
    assert copier.sync(settled_only=True) == 0
    time.sleep(0.01)
    (source / "a.txt").write_text("changed")
    assert copier.sync(settled_only=True) == 0
    assert copier.sync() == 1
    assert (destination / "a.txt").read_text() == "changed"
    assert not (destination / "link.txt").exists() and not (destination / "dirlink").exists()
    assert not list(destination.rglob("*.partial"))


# -- the command -----------------------------------------------------------------------------------------------


def invoke(args: list[str]) -> Any:
    """Through the group, as `smbyoc` runs it (a command invoked alone would cache click's help option without -h)."""
    _register()
    return CliRunner().invoke(cli, ["local-process", *args])


def test_input_and_output_flags_parse_uris_with_colons() -> None:
    assert parse_inputs(("raw=s3://bkt/raw/:/opt/ml/processing/in", "x=./d", "y=s3://bkt/k", "z=file:///d:/data")) == [
        ("raw", "s3://bkt/raw/", "/opt/ml/processing/in"), ("x", "./d", None), ("y", "s3://bkt/k", None),
        ("z", "file:///d", "/data")]
    assert parse_outputs(("o=/opt/ml/processing/out:s3://bkt/o/", "p=./out")) == [
        ("o", "/opt/ml/processing/out", "s3://bkt/o/"), ("p", None, "./out")]
    with pytest.raises(ConfigError, match="--output o=/opt/ml/processing/out: expected"):
        parse_outputs(("o=/opt/ml/processing/out",))
    with pytest.raises(ConfigError, match="--input raw"):
        parse_inputs(("raw=ftp://x/y",))


@pytest.mark.parametrize(("args", "expected"), [
    (["--image", "img", "-i", "raw=./d:/data/raw"],
     "Error: options: ProcessingInputs[0].S3Input.LocalPath: '/data/raw' must begin with /opt/ml/processing/"),
    (["--image", "img", "--instance-count", "0"],
     "Error: options: ProcessingResources.ClusterConfig.InstanceCount: 0 is below the minimum 1"),
    (["-i", "raw=./d"], "Error: --image: give the processing image"),
    (["--image", "img", "--job-name", "a_b"], "Error: options: ProcessingJobName: 'a_b' does not match"),
    (["--request", "missing.json"], "Error: --request missing.json: no such file"),
    (["--image", "img", "-i", "raw=./d", "--compression", "Gzip"],
     "Error: options: ProcessingInputs[0].S3Input.S3CompressionType: Gzip can only be used when Pipe mode"),
    (["--image", "img", "-i", "raw=./d", "--input-mode", "Pipe", "--pipe-path", "/data/{input_name}_{epoch}"],
     "Error: --pipe-path /data/{input_name}_{epoch}: input 'raw''s pipe /data/raw_0 must lie below "
     "/opt/ml/processing/"),
    (["--image", "img", "-i", "raw=./d", "--input-mode", "Pipe", "--pipe-path", "{local_path}.fifo"],
     "Error: --pipe-path {local_path}.fifo: must contain {epoch}"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit_before_docker(args: list[str], expected: str,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    outcome = invoke(args)
    assert outcome.exit_code != 0
    assert outcome.output.strip().startswith(expected), outcome.output
    assert len(outcome.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("smbyoc-*"))


def test_a_request_file_that_is_not_json_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "job.json").write_text("{nope")
    outcome = invoke(["--request", str(tmp_path / "job.json")])
    assert outcome.exit_code != 0 and f"{tmp_path / 'job.json'}: not JSON" in outcome.output


def test_the_container_definition_runs_the_image_with_sigint_and_the_three_mounts(tmp_path: Path) -> None:
    from smbyoc.emulator.docker_processing import DockerProcessingBackend

    spec = ProcessingJobSpec(job_name="j", image="img", arguments=("x",), environment={"A": "1"},
                             instance_type="ml.m5.large", network_isolation=True)
    backend = DockerProcessingBackend(client=None, image="img")
    args = backend.container_args(spec, HostTree("algo-1", tmp_path / "algo-1"), "none", "abc")
    assert args["command"] == ["x"] and "entrypoint" not in args
    assert args["environment"] == {"A": "1"}  # the request's Environment alone: no TRAINING_JOB_NAME
    assert args["stop_signal"] == "SIGINT" and args["network_mode"] == "none" and args["hostname"] == "algo-1"
    assert args["volumes"] == {str(tmp_path / "algo-1" / name): {"bind": f"/opt/ml/{name}", "mode": "rw"}
                               for name in ("config", "output", "processing")}
    assert args["mem_limit"] == 8 * 1024**3


# ------------------------------------------------------------------------------------------ Pipe input mode


def pipe_spec(tmp_path: Path, pipe_path: str | None = None, **item: Any) -> ProcessingJobSpec:
    settings = {"input_mode": "Pipe", "distribution": "ShardedByS3Key", **item}
    return ProcessingJobSpec(
        job_name="j", image="img", instance_count=2, pipe_path=pipe_path,
        inputs=(ProcessingInput("raw", "s3://b/", "/opt/ml/processing/input/raw", source=_tree_source(tmp_path, 4),
                                **settings),
                ProcessingInput("side", "s3://b/s/", "/opt/ml/processing/side", source=tmp_path)),
        outputs=(ProcessingOutput("out", "s3://b/o/", "/opt/ml/processing/output/out", destination=tmp_path / "o"),))


def test_pipe_mode_and_gzip_with_it_are_accepted() -> None:
    req = request()
    req["ProcessingInputs"][0]["S3Input"].update(S3InputMode="Pipe", S3CompressionType="Gzip")
    spec = spec_from_request(req)
    assert (spec.inputs[0].input_mode, spec.inputs[0].compression) == ("Pipe", "Gzip")
    assert spec.job_config()["ProcessingInputs"][0]["S3Input"]["S3InputMode"] == "Pipe"


def test_pipe_paths_default_to_the_local_path_and_epoch_and_follow_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIPE_PATH_ENV, raising=False)
    spec = pipe_spec(tmp_path)
    assert pipe_pattern(spec) == DEFAULT_PIPE_PATH
    assert fifo_path(pipe_pattern(spec), spec.inputs[0], 3) == "/opt/ml/processing/input/raw_3"
    assert feeder_pattern(pipe_pattern(spec), spec.inputs[0]) == "input/raw_{epoch}"
    monkeypatch.setenv(PIPE_PATH_ENV, "/opt/ml/processing/pipes/{input_name}/{epoch}")
    assert feeder_pattern(pipe_pattern(spec), spec.inputs[0]) == "pipes/raw/{epoch}"
    chosen = pipe_spec(tmp_path, "{local_path}/part-{epoch}")  # the spec's (the option's) wins over the variable
    assert feeder_pattern(pipe_pattern(chosen), chosen.inputs[0]) == "input/raw/part-{epoch}"
    check_pipe_paths(chosen)


@pytest.mark.parametrize(("pattern", "expected"), [
    ("{local_path}", "must contain {epoch}"),
    ("{local_path}_{epoch}_{nope}", "bad pattern ('nope')"),
    ("/tmp/{input_name}_{epoch}", "input 'raw''s pipe /tmp/raw_0 must lie below /opt/ml/processing/"),
    ("/opt/ml/processing/output/out/{epoch}", "lies in output 'out''s LocalPath /opt/ml/processing/output/out"),
    ("/opt/ml/processing/side/{input_name}{epoch}", "lies in File-mode input 'side''s LocalPath"),
])
def test_a_bad_pipe_path_is_refused_naming_it(tmp_path: Path, pattern: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_pipe_paths(pipe_spec(tmp_path, pattern))
    assert expected in str(caught.value) and f"--pipe-path {pattern}" in str(caught.value)


def test_two_pipe_inputs_cannot_share_a_fifo(tmp_path: Path) -> None:
    spec = pipe_spec(tmp_path, "/opt/ml/processing/pipe_{epoch}")
    spec = ProcessingJobSpec(job_name="j", image="img", pipe_path=spec.pipe_path, inputs=(
        spec.inputs[0], ProcessingInput("two", "s3://b/", "/opt/ml/processing/two", source=tmp_path,
                                        input_mode="Pipe")))
    with pytest.raises(ConfigError, match="inputs 'raw' and 'two' would share the pipe /opt/ml/processing/pipe_0"):
        check_pipe_paths(spec)


def test_pipe_inputs_are_not_copied_and_each_host_streams_its_share_decompressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import threading

    monkeypatch.delenv(PIPE_PATH_ENV, raising=False)
    source = tmp_path / "packed"
    source.mkdir()
    for i in range(4):
        (source / f"f{i}.gz").write_bytes(gzip.compress(f"row {i}\n".encode()))
    spec = pipe_spec(tmp_path, compression="Gzip")
    spec = ProcessingJobSpec(job_name="j", image="img", instance_count=2, outputs=spec.outputs,
                             inputs=(dataclasses.replace(spec.inputs[0], source=source), spec.inputs[1]))
    tree = lay_out_host(spec, "algo-2", tmp_path / "algo-2")
    assert not (tree.root / "processing" / "input" / "raw").exists()  # nothing on the volume
    sources, patterns = pipe_sources(spec, "algo-2", input_objects)
    assert patterns == ["input/raw_{epoch}"] and [p.name for p in sources[0].objects] == ["f1.gz", "f3.gz"]
    feeders = start_feeders(sources, tree.root / "processing", "algo-2", patterns)
    try:
        got: list[bytes] = []
        for epoch in (0, 1):  # a second pass gets the next FIFO, with the same data
            reader = threading.Thread(
                target=lambda e=epoch: got.append(_read_fifo(tree.root / f"processing/input/raw_{e}")))
            reader.start()
            reader.join(10)
        assert got == [b"row 1\nrow 3\n"] * 2
    finally:
        stop_feeders(feeders)
    assert not list((tree.root / "processing" / "input").glob("raw_*"))  # the FIFOs are gone
    assert feeders[0].error is None and feeders[0].bytes_written == 2 * len(b"row 1\nrow 3\n")


def _read_fifo(path: Path) -> bytes:
    deadline = time.monotonic() + 10
    while not path.is_fifo() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path.read_bytes()


def test_an_object_that_is_not_gzip_fails_the_job_as_a_client_error(tmp_path: Path) -> None:
    from smbyoc.emulator.pipe_feeder import PipeFeeder, PipeSource
    from smbyoc.emulator.processing_job import _feeder_problem

    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    feeder = PipeFeeder(PipeSource("raw", (tmp_path / "plain.gz",), compression="Gzip"), tmp_path / "p", "algo-1",
                        "input/raw_{epoch}").start()
    try:
        assert _read_fifo(tmp_path / "p" / "input" / "raw_0") == b""
    finally:
        feeder.stop()
    reason = _feeder_problem([feeder])
    assert reason is not None and reason.startswith("ClientError: Pipe-mode input raw on algo-1 could not be streamed")
