"""``s3://`` URIs, relative keys and locations: every bad value is one ConfigError naming it (no AWS needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smbyoc.cli.options import channel_data_type
from smbyoc.emulator.local_training import ChannelSetting
from smbyoc.errors import ConfigError
from smbyoc.s3 import S3Uri, is_s3_uri
from smbyoc.s3.staging import Staging, check_location, local_path
from smbyoc.s3.transfer import check_endpoint_url, check_layout, check_relative, relative_key

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


@pytest.mark.parametrize(("text", "bucket", "key"), [
    ("s3://my-bucket/data/train/", "my-bucket", "data/train/"),
    ("s3://my.bucket.v2/a/b.csv", "my.bucket.v2", "a/b.csv"),
    ("s3://abc", "abc", ""),
    ("s3://abc/", "abc", ""),
    ("S3://abc/x", "abc", "x"),
    ("s3://abc/with space/ü.csv", "abc", "with space/ü.csv"),
])
def test_parses(text: str, bucket: str, key: str) -> None:
    uri = S3Uri.parse(text)
    assert (uri.bucket, uri.key) == (bucket, key)
    assert is_s3_uri(text)


@pytest.mark.parametrize(("text", "reason"), [
    ("s3://ab/k", "3-63 characters"),
    ("s3://" + "a" * 64 + "/k", "3-63 characters"),
    ("s3://My-Bucket/k", "lowercase letters"),
    ("s3://my_bucket/k", "lowercase letters"),
    ("s3://-bucket/k", "starting and ending"),
    ("s3://bucket-/k", "starting and ending"),
    ("s3://my..bucket/k", "two adjacent periods"),
    ("s3://192.168.1.10/k", "IP address"),
    ("s3://xn--bucket/k", "'xn--' is reserved"),
    ("s3://bucket-s3alias/k", "'-s3alias' is reserved"),
    ("s3:///key", "bucket name is missing"),
    ("s3://", "bucket name is missing"),
    ("https://bucket.s3.amazonaws.com/k", "https:// URIs are not supported"),
    ("gs://bucket/k", "gs:// URIs are not supported"),
    ("bucket/key", "expected an s3://bucket/key URI"),
    ("s3://bucket/" + "k" * 1025, "at most 1024 bytes"),
    ("s3://bucket/a\nb", "control character"),
])
def test_refuses_with_one_line_naming_the_value(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        S3Uri.parse(text, what="--channel train")
    message = str(caught.value)
    assert reason in message
    assert message.startswith(f"--channel train {text}: ")
    assert "\n" not in message.replace(text, "")


def test_need_key() -> None:
    with pytest.raises(ConfigError, match="needs an object key"):
        S3Uri.parse("s3://bucket", need_key=True, what="--model-data")
    with pytest.raises(ConfigError, match="names a folder"):
        S3Uri.parse("s3://bucket/models/", need_key=True)
    assert S3Uri.parse("s3://bucket/m/model.tar.gz", need_key=True).name == "model.tar.gz"


def test_child_and_str() -> None:
    assert str(S3Uri("b12", "jobs").child("j/output/model.tar.gz")) == "s3://b12/jobs/j/output/model.tar.gz"
    assert str(S3Uri("b12", "jobs/").child("x")) == "s3://b12/jobs/x"
    assert str(S3Uri("b12", "").child("x")) == "s3://b12/x"
    assert S3Uri("b12", "").is_folder and S3Uri("b12", "p/").is_folder and not S3Uri("b12", "p").is_folder


def test_relative_keys_follow_sdk_local_mode() -> None:
    assert relative_key("data/train/a.csv", "data/train", "b") == "a.csv"
    assert relative_key("data/train/sub/a.csv", "data/train/", "b") == "sub/a.csv"
    for bad in ("data/train/../x", "data/train/a//b", "data/train/./a"):
        with pytest.raises(ConfigError, match="cannot be a local path"):
            relative_key(bad, "data/train/", "b")
    with pytest.raises(ConfigError, match="cannot be a local path"):
        check_relative("", "entry 1")


def test_layout_clashes_are_refused() -> None:
    check_layout(["a/b", "a/c", "d"], "x")
    with pytest.raises(ConfigError, match="'a' is an object and also the folder of 'a/b'"):
        check_layout(["a", "a/b"], "s3://b/p/")
    with pytest.raises(ConfigError, match="named twice"):
        check_layout(["a", "a"], "manifest")


def test_local_paths_and_file_uris() -> None:
    assert local_path("data/train", what="-c train") == Path("data/train")
    assert local_path("file:///tmp/x%20y", what="-c train") == Path("/tmp/x y")
    with pytest.raises(ConfigError, match="needs an absolute path"):
        local_path("file://host/x", what="-c train")
    with pytest.raises(ConfigError, match="^--model-data gs://b/m: gs:// is not supported"):
        local_path("gs://b/m", what="--model-data")
    check_location("./relative/path")
    with pytest.raises(ConfigError, match="bucket"):
        check_location("s3://B/x")


@pytest.mark.parametrize("url", ["localhost:9000", "ftp://host", "http://", "http://host:99999"])
def test_bad_endpoint_url(url: str) -> None:
    with pytest.raises(ConfigError, match=f"^--endpoint-url {url}: "):
        check_endpoint_url(url)
    assert check_endpoint_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert check_endpoint_url(None) is None


def test_staging_with_local_locations_needs_no_aws(tmp_path: Path) -> None:
    with Staging() as staging:
        assert staging.input(tmp_path, what="-c train") == tmp_path
        assert staging.output("out", what="-o") == Path("out")
        assert staging.code(f"file://{tmp_path}", what="-s") == tmp_path
        assert staging.publish() == []
        assert staging._transfers is None  # no client, no credentials asked for
        assert staging.restore_uris({"a": [str(tmp_path)]}) == {"a": [str(tmp_path)]}


def test_restore_uris_maps_stand_ins_back(tmp_path: Path) -> None:
    staging = Staging()
    out = tmp_path / "out"
    out.mkdir()
    staging._remember(out, "s3://bucket/jobs")
    model = out / "j" / "output" / "model.tar.gz"
    data = {"ModelArtifacts": {"S3ModelArtifacts": model.as_uri()}, "OutputDataConfig": {"S3OutputPath": out.as_uri()},
            "Paths": [str(model), str(tmp_path / "outside")], "Other": 3}
    assert staging.restore_uris(data) == {
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/jobs/j/output/model.tar.gz"},
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/jobs"},
        "Paths": ["s3://bucket/jobs/j/output/model.tar.gz", str(tmp_path / "outside")], "Other": 3}
    assert staging.uri_of(str(out) + "x") == str(out) + "x"  # a sibling with a longer name is not inside


def test_channel_data_type() -> None:
    settings = [ChannelSetting("data_type", "ManifestFile"), ChannelSetting("data_type", "S3Prefix", "validation"),
                ChannelSetting("input_mode", "Pipe")]
    assert channel_data_type(settings, "train") == "ManifestFile"
    assert channel_data_type(settings, "validation") == "S3Prefix"
    assert channel_data_type([], "train") == "S3Prefix"


@pytest.mark.parametrize(("args", "culprit"), [
    (["local-train", "--mode", "process", "-o", "s3://Bad_Bucket/jobs"], "s3://Bad_Bucket/jobs"),
    (["local-train", "--mode", "process", "-c", "train=s3://ab/x"], "s3://ab/x"),
    (["local-train", "--mode", "process", "-s", "gs://bucket/code.tar.gz"], "gs://bucket/code.tar.gz"),
    (["local-serve", "--mode", "process", "--model-data", "s3://bucket"], None),
    (["local-transform", "--mode", "process", "--input", "s3://x/in", "--output", "out"], "s3://x/in"),
    (["local-train", "--mode", "process", "--endpoint-url", "localhost:9000", "-c", "train=s3://bucket/x"],
     "localhost:9000"),
])
def test_cli_bad_locations_are_one_line_before_anything(tmp_path: Path, args: list[str], culprit: str | None) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SMBYOC_CACHE_DIR": str(tmp_path / "cache"),
           "SMBYOC_STATE_DIR": str(tmp_path / "state"), "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([*SMBYOC, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    if culprit is None:  # s3://bucket as a model: a valid prefix, but no credentials here: one line naming the chain
        assert lines[-1].startswith("Error: ") and "credential chain" in lines[-1], proc.stderr
    else:
        assert culprit in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in lines if line.startswith("Error")]) == 1
    assert not (tmp_path / "smbyoc-output").exists() and not (tmp_path / "out").exists()
