"""smbyoc.s3 against a real S3 API (moto in server mode on loopback) through the real boto3 client: prefixes,
objects, manifests, code tarballs, checkpoints, the ETag cache, uploads, and one line for every failure."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.errors import AwsError, ConfigError
from smbyoc.s3 import download, upload_file
from smbyoc.s3.staging import Staging

pytestmark = pytest.mark.integration


@pytest.fixture()
def s3(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 client for the test's own fixtures (the code under test makes its own), a fresh cache."""
    import boto3

    monkeypatch.setenv("SMBYOC_CACHE_DIR", str(tmp_path / "cache"))
    client = boto3.client("s3")
    client.create_bucket(Bucket="smbyoc-data")
    return client


class GetCounter:
    """Counts the GetObject calls a client makes (an observer on botocore's event hooks; nothing is patched)."""

    def __init__(self, staging: Staging) -> None:
        self.keys: list[str] = []
        staging.transfers.client.meta.events.register("before-call.s3.GetObject", self._seen)

    def _seen(self, params: dict[str, Any], **kwargs: Any) -> None:
        self.keys.append(params["url_path"].rsplit("/", 1)[-1])


@pytest.fixture()
def staging(s3: Any) -> Iterator[tuple[Staging, list[str]]]:
    lines: list[str] = []
    with Staging(progress=lines.append) as stage:
        yield stage, lines


def put(s3: Any, key: str, body: bytes | str, bucket: str = "smbyoc-data") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prefix_is_cached_by_etag(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, lines = staging
    put(s3, "data/train/a.csv", "1,2\n")
    put(s3, "data/train/sub/b.csv", "3,4\n")
    put(s3, "data/train/sub/", "")  # a folder marker: skipped
    put(s3, "data/training-other.csv", "not under data/train/")
    gets = GetCounter(stage)
    first = stage.input("s3://smbyoc-data/data/train/", what="--channel train")
    assert tree(first) == {"a.csv": "1,2\n", "sub/b.csv": "3,4\n"}
    assert sorted(gets.keys) == ["a.csv", "b.csv"]
    assert any(line.startswith("s3://smbyoc-data/data/train/: downloaded") for line in lines), lines

    again = stage.input("s3://smbyoc-data/data/train/", what="--channel train")
    assert again == first
    assert len(gets.keys) == 2  # no GetObject: every object is cached at its ETag
    assert lines[-1] == "s3://smbyoc-data/data/train/: cached (2 objects, 8 B)"

    put(s3, "data/train/a.csv", "1,2\n5,6\n")  # a new ETag
    changed = stage.input("s3://smbyoc-data/data/train/", what="--channel train")
    assert gets.keys[2:] == ["a.csv"]  # only the changed object is downloaded again
    assert tree(changed) == {"a.csv": "1,2\n5,6\n", "sub/b.csv": "3,4\n"}
    assert tree(first) == {"a.csv": "1,2\n", "sub/b.csv": "3,4\n"}  # the earlier tree is untouched
    assert "(1 cached)" in " ".join(lines)


def test_object_and_key_prefix(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, _ = staging
    put(s3, "models/model.tar.gz", b"\x1f\x8b tarball")
    put(s3, "data/part-0.csv", "0\n")
    put(s3, "data/part-1.csv", "1\n")
    model = stage.model("s3://smbyoc-data/models/model.tar.gz", what="--model-data")
    assert model.name == "model.tar.gz" and model.read_bytes() == b"\x1f\x8b tarball"
    # No object is named data/part: the key is a prefix (as S3Prefix is), relative keys keep the rest.
    parts = stage.input("s3://smbyoc-data/data/part", what="--input")
    assert tree(parts) == {"-0.csv": "0\n", "-1.csv": "1\n"}


def test_manifest_channel(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, _ = staging
    put(s3, "raw/x/a.csv", "a\n")
    put(s3, "raw/y/b.csv", "b\n")
    put(s3, "raw/z/c.csv", "not named\n")
    put(s3, "manifests/m.json", json.dumps([{"prefix": "s3://smbyoc-data/raw/"}, "y/b.csv", "x/a.csv"]))
    manifest = stage.input("s3://smbyoc-data/manifests/m.json", what="--channel train", data_type="ManifestFile")
    from smbyoc.emulator.manifest import read_manifest

    entries = read_manifest(manifest)
    assert [(e.key, e.path.read_text()) for e in entries] == [("y/b.csv", "b\n"), ("x/a.csv", "a\n")]

    put(s3, "manifests/bad.json", json.dumps([{"prefix": "s3://smbyoc-data/raw/"}, "x/a.csv", "nope.csv"]))
    with pytest.raises(ConfigError, match=r"^--channel train s3://smbyoc-data/manifests/bad.json: entry 2: "
                                          r"no such object s3://smbyoc-data/raw/nope.csv$"):
        stage.input("s3://smbyoc-data/manifests/bad.json", what="--channel train", data_type="ManifestFile")
    put(s3, "manifests/escape.json", json.dumps([{"prefix": "s3://smbyoc-data/raw/"}, "../secret"]))
    with pytest.raises(ConfigError, match="cannot be a local path"):
        stage.input("s3://smbyoc-data/manifests/escape.json", what="--channel train", data_type="ManifestFile")


def test_code_tarball_is_unpacked(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, _ = staging
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("train.py", "print('hi')\n"), ("lib/util.py", "X = 1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    put(s3, "code/sourcedir.tar.gz", buffer.getvalue())
    code = stage.code("s3://smbyoc-data/code/sourcedir.tar.gz", what="--source-dir")
    assert tree(code) == {"lib/util.py": "X = 1\n", "train.py": "print('hi')\n"}
    assert stage.code("s3://smbyoc-data/code/sourcedir.tar.gz", what="--source-dir") == code


def test_outputs_and_checkpoints_are_published(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, lines = staging
    put(s3, "ckpt/epoch-1.pt", "one")
    put(s3, "ckpt/epoch-2.pt", "two")
    out = stage.output("s3://smbyoc-data/jobs", what="--output-dir")
    ckpt = stage.checkpoints("s3://smbyoc-data/ckpt", what="--checkpoint-s3-dir")
    assert tree(ckpt) == {"epoch-1.pt": "one", "epoch-2.pt": "two"}
    (out / "job" / "output").mkdir(parents=True)
    (out / "job" / "output" / "model.tar.gz").write_text("model")
    (ckpt / "epoch-1.pt").unlink()
    (ckpt / "epoch-3.pt").write_text("three")
    written = stage.publish()
    assert written == ["s3://smbyoc-data/jobs/job/output/model.tar.gz", "s3://smbyoc-data/ckpt/epoch-3.pt"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="smbyoc-data")["Contents"])
    assert keys == ["ckpt/epoch-2.pt", "ckpt/epoch-3.pt", "jobs/job/output/model.tar.gz"]
    assert any("deleted 1 checkpoint" in line for line in lines)
    stage.close()
    assert not out.exists() and not ckpt.exists()


def test_download_and_upload_file(s3: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (36 * 1024 * 4))  # 36 MiB: a multipart upload
    lines: list[str] = []
    uri = upload_file(big, "s3://smbyoc-data/blobs/big.bin", progress=lines.append)
    assert uri == "s3://smbyoc-data/blobs/big.bin"
    assert "-" in s3.head_object(Bucket="smbyoc-data", Key="blobs/big.bin")["ETag"]  # multipart
    assert lines[-1].startswith("s3://smbyoc-data/blobs/big.bin: uploaded 36.0 MiB in ")
    fetched = download(uri, tmp_path / "dest")
    assert fetched == tmp_path / "dest" / "big.bin"
    assert fetched.read_bytes() == big.read_bytes()
    put(s3, "blobs/more/x.txt", "x")
    folder = download("s3://smbyoc-data/blobs/", tmp_path / "all")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["big.bin", "more/x.txt"]
    assert not list((tmp_path / "all").rglob("*partial*"))


def test_missing_objects_and_buckets_are_one_line(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    stage, _ = staging
    with pytest.raises(ConfigError) as caught:
        stage.input("s3://smbyoc-data/nothing/here", what="--channel train")
    assert str(caught.value) == ("--channel train s3://smbyoc-data/nothing/here: no such object, and no objects under "
                                 "this prefix")
    with pytest.raises(ConfigError, match="^--output-dir s3://no-such-bucket/jobs: no such bucket 'no-such-bucket'$"):
        stage.output("s3://no-such-bucket/jobs", what="--output-dir")
    with pytest.raises(AwsError, match=r"^list s3://no-such-bucket/x: NoSuchBucket: "):
        stage.input("s3://no-such-bucket/x", what="--channel train")
    put(s3, "p/../evil", "x")
    with pytest.raises(ConfigError, match=r"object s3://smbyoc-data/p/\.\./evil: this key cannot be a local path"):
        stage.input("s3://smbyoc-data/p/", what="--channel train")


def test_unreachable_endpoint_is_one_line(s3: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with Staging(endpoint_url=closed) as stage, pytest.raises(AwsError) as caught:
        stage.input("s3://smbyoc-data/x", what="--channel train")
    assert f"cannot reach {closed} (" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_credentials_is_one_line_naming_the_chain(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with Staging() as stage, pytest.raises(AwsError) as caught:
        stage.input("s3://smbyoc-data/x", what="--channel train")
    assert str(caught.value).startswith("use s3: no AWS credentials found in the credential chain (AWS_ACCESS_KEY_ID")
    assert caught.value.code == "NoCredentials"


def test_endpoint_config_model_data_from_s3(s3: Any, tmp_path: Path) -> None:
    from smbyoc.emulator.endpoint_config import parse_endpoint_config

    put(s3, "models/a/model.tar.gz", b"tarball")
    document: dict[str, Any] = {
        "Models": [{"ModelName": "m", "PrimaryContainer": {"Image": "my-algo:1",
                                                           "ModelDataUrl": "s3://smbyoc-data/models/a/model.tar.gz"}}],
        "EndpointConfig": {"EndpointConfigName": "c", "ProductionVariants": [
            {"VariantName": "v", "ModelName": "m", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}]},
    }
    lines: list[str] = []
    with Staging(progress=lines.append) as stage:
        definition = parse_endpoint_config(document, source="endpoint.json", base_dir=tmp_path, staging=stage)
    (container,) = definition.models["m"].containers
    assert container.model_data is not None and container.model_data.read_bytes() == b"tarball"
    # The request keeps the URI SageMaker would get.
    assert definition.model_requests[0]["PrimaryContainer"]["ModelDataUrl"] == "s3://smbyoc-data/models/a/model.tar.gz"
    assert [line.split(" in ")[0] for line in lines] == ["s3://smbyoc-data/models/a/model.tar.gz: downloaded 7 B"]

    document["Models"][0]["PrimaryContainer"]["ModelDataUrl"] = "s3://smbyoc-data/models/missing.tar.gz"
    with pytest.raises(ConfigError, match=r"^endpoint.json: Models\[0\].PrimaryContainer.ModelDataUrl "
                                          r"s3://smbyoc-data/models/missing.tar.gz: no such object"):
        parse_endpoint_config(document, source="endpoint.json", base_dir=tmp_path, staging=Staging())
    with pytest.raises(ConfigError, match=r"S3 URIs are not supported yet; give a local path or a file:// URI "
                                          r"\(smbyoc local-serve downloads s3:// model data\)"):
        parse_endpoint_config(document, source="endpoint.json", base_dir=tmp_path)  # no staging: nothing fetched

    document["Models"][0]["PrimaryContainer"]["ModelDataUrl"] = "s3://smbyoc-data/models/a/model.tar.gz"
    document["EndpointConfig"]["DataCaptureConfig"] = {
        "InitialSamplingPercentage": 100, "DestinationS3Uri": "s3://smbyoc-data/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}]}
    with pytest.raises(ConfigError, match=r"S3 URIs are not supported yet for data capture "
                                          r"\(DataCaptureConfig.DestinationS3Uri\): s3:// destinations are not "
                                          r"emulated"):
        parse_endpoint_config(document, source="endpoint.json", base_dir=tmp_path, staging=Staging())


def test_container_models_from_s3(s3: Any, staging: tuple[Staging, list[str]]) -> None:
    from smbyoc.cli.serve_cmd import stage_container_model
    from smbyoc.emulator.model_containers import parse_container

    stage, _ = staging
    put(s3, "models/pre/model.tar.gz", b"pre")
    put(s3, "models/algo/model.tar.gz", b"algo")
    short = parse_container(stage_container_model("my-algo:1.0:s3://smbyoc-data/models/algo/model.tar.gz", stage))
    assert short.image == "my-algo:1.0"
    assert short.model_data is not None and short.model_data.read_bytes() == b"algo"
    long = parse_container(stage_container_model(
        "image=pre:1,model=s3://smbyoc-data/models/pre/model.tar.gz,hostname=pre", stage))
    assert (long.image, long.hostname) == ("pre:1", "pre")
    assert long.model_data is not None and long.model_data.read_bytes() == b"pre"
    assert stage_container_model("my-algo:1.0:./model", stage) == "my-algo:1.0:./model"
    with pytest.raises(ConfigError, match=r"^--container s3://smbyoc-data/none.tar.gz: no such object"):
        stage_container_model("my-algo:s3://smbyoc-data/none.tar.gz", stage)
