import json
import tarfile

import pytest

from smbyoc.emulator.artifacts import collect, merge_dirs
from smbyoc.emulator.job_spec import ChannelSpec, TrainingJobSpec
from smbyoc.emulator.layout import channel_files, lay_out_host, make_writable, shard


def make_data(root, names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(name)
    return root


def test_lay_out_host_writes_the_three_config_files(tmp_path):
    data = make_data(tmp_path / "data", ["a.csv", "sub/b.csv"])
    single = tmp_path / "one.csv"
    single.write_text("x")
    spec = TrainingJobSpec(
        job_name="j",
        hyperparameters={"epochs": "3"},
        channels=(ChannelSpec("train", data, content_type="text/csv"), ChannelSpec("extra", single)),
    )
    tree = lay_out_host(spec, "algo-1", tmp_path / "algo-1")
    p = tree.paths
    assert json.loads(p.hyperparameters_file.read_text()) == {"epochs": "3"}
    rc = json.loads(p.resource_config_file.read_text())
    assert rc["current_host"] == "algo-1" and rc["hosts"] == ["algo-1"]
    idc = json.loads(p.input_data_config_file.read_text())
    assert idc["train"]["ContentType"] == "text/csv"
    assert idc["extra"]["TrainingInputMode"] == "File"
    assert (p.channel_dir("train") / "sub" / "b.csv").read_text() == "sub/b.csv"
    assert (p.channel_dir("extra") / "one.csv").read_text() == "x"
    for d in (p.model_dir, p.output_data_dir, p.checkpoints_dir, p.code_dir):
        assert d.is_dir()
    assert not p.failure_file.exists()
    # The user's data is copied, not shared: writing in the channel does not touch the source.
    (p.channel_dir("train") / "a.csv").write_text("changed")
    assert (data / "a.csv").read_text() == "a.csv"


def test_sharded_by_s3_key_splits_sorted_keys(tmp_path):
    data = make_data(tmp_path / "d", [f"part-{i:02d}" for i in range(5)])
    files = channel_files(data)
    assert [f.name for f in shard(files, 0, 2)] == ["part-00", "part-02", "part-04"]
    assert [f.name for f in shard(files, 1, 2)] == ["part-01", "part-03"]
    spec = TrainingJobSpec(
        job_name="j", hyperparameters={}, instance_count=2,
        channels=(ChannelSpec("train", data, distribution="ShardedByS3Key"),),
    )
    t2 = lay_out_host(spec, "algo-2", tmp_path / "algo-2")
    assert sorted(p.name for p in t2.paths.channel_dir("train").iterdir()) == ["part-01", "part-03"]
    assert json.loads(t2.paths.input_data_config_file.read_text())["train"]["S3DistributionType"] == "ShardedByS3Key"


def test_a_link_to_a_file_is_the_file_and_a_link_to_a_folder_is_refused(tmp_path):
    from smbyoc.errors import ConfigError

    data = make_data(tmp_path / "d", ["a.csv"])
    (tmp_path / "outside.csv").write_text("o")
    (data / "linked.csv").symlink_to(tmp_path / "outside.csv")
    assert [f.name for f in channel_files(data)] == ["a.csv", "linked.csv"]
    (tmp_path / "folder").mkdir()
    (data / "dlink").symlink_to(tmp_path / "folder")
    with pytest.raises(ConfigError, match=r"dlink: a link to a folder \(an S3 prefix has no links\)"):
        channel_files(data)


def test_fastfile_channel_has_no_write_bits(tmp_path):
    data = make_data(tmp_path / "d", ["a"])
    spec = TrainingJobSpec(job_name="j", hyperparameters={}, channels=(ChannelSpec("t", data, input_mode="FastFile"),))
    tree = lay_out_host(spec, "algo-1", tmp_path / "h")
    assert (tree.paths.channel_dir("t") / "a").stat().st_mode & 0o222 == 0
    make_writable(tmp_path / "h")
    assert (tree.paths.channel_dir("t") / "a").stat().st_mode & 0o200


def test_collect_puts_model_files_at_archive_root_and_only_output_data(tmp_path):
    host = tmp_path / "algo-1"
    make_data(host / "model", ["model.pt", "code/inference.py"])
    make_data(host / "output", ["data/metrics.json", "success"])
    arts = collect([("algo-1", host)], tmp_path / "out", "job")
    assert arts.model.path == tmp_path / "out" / "job" / "output" / "model.tar.gz"
    with tarfile.open(arts.model.path) as tar:
        assert sorted(tar.getnames()) == ["code", "code/inference.py", "model.pt"]
    with tarfile.open(arts.output.path) as tar:
        assert tar.getnames() == ["metrics.json"]
    assert arts.model.size == arts.model.path.stat().st_size
    assert not list((tmp_path / "out" / "job" / "output").glob("*.partial"))


def test_collect_leaves_no_half_archive_on_failure(tmp_path, monkeypatch):
    host = tmp_path / "algo-1"
    make_data(host / "model", ["m"])
    (host / "output" / "data").mkdir(parents=True)
    import tarfile as tf

    real_addfile = tf.TarFile.addfile

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tf.TarFile, "addfile", boom)
    with pytest.raises(OSError, match="disk full"):
        collect([("algo-1", host)], tmp_path / "out", "job")
    monkeypatch.setattr(tf.TarFile, "addfile", real_addfile)
    assert list((tmp_path / "out" / "job" / "output").iterdir()) == []


def test_multi_host_merge_reports_clashes(tmp_path):
    a = make_data(tmp_path / "a", ["shared.bin", "a-only"])
    b = make_data(tmp_path / "b", ["shared.bin", "b-only"])
    clashes = merge_dirs([("algo-1", a), ("algo-2", b)], tmp_path / "merged")
    assert clashes == ["shared.bin (written by algo-1 and algo-2)"]
    assert (tmp_path / "merged" / "shared.bin").read_text() == "shared.bin"
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["a-only", "b-only", "shared.bin"]
