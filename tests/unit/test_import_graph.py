"""The smbyoc-internal import graph has no cycle, and each /opt/ml config file module round-trips.

The graph counts every import the source spells: top-level, inside functions and under
``if TYPE_CHECKING:`` alike (``ast.walk`` sees them all). An import of one's own ancestor package
(``smbyoc.training.env`` importing ``smbyoc.training``) is not an edge: Python imports the ancestors
before the module in any case, so such an edge says nothing about the order the modules need.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import smbyoc
from smbyoc.emulator.job_spec import ChannelSpec, TrainingJobSpec
from smbyoc.errors import ConfigError
from smbyoc.opt_ml import hyperparameters_file, input_data_config_file, resource_config_file
from smbyoc.opt_ml.input_data_config_file import Channel
from smbyoc.opt_ml.resource_config_file import InstanceGroup, ResourceConfig
from smbyoc.paths import Paths
from smbyoc.training import TrainingEnv

PACKAGE_DIR = Path(smbyoc.__file__).parent

# ------------------------------------------------------------------------------------- import graph


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package rooted at ``package_dir``."""
    modules = {}
    for file in sorted(package_dir.rglob("*.py")):
        parts = file.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def imported_names(module: str, file: Path) -> set[str]:
    """Every dotted name ``file`` imports (and ``from X import y`` as both ``X`` and ``X.y``)."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports (ancestor packages left out, see the module docstring)."""
    modules = module_files(package_dir)
    graph: dict[str, set[str]] = {}
    for module, file in modules.items():
        edges = set()
        for imported in imported_names(module, file):
            name = imported
            while name and name not in modules:  # ``pkg.mod.attr`` → ``pkg.mod``
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_smbyoc_imports_have_no_cycle() -> None:
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 50 and "smbyoc.training.env" in graph
    assert "smbyoc.opt_ml.resource_config_file" in graph["smbyoc.training.mapping"]  # edges are really read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_finds_lazy_and_type_checking_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.a import A\n")  # ancestor: not an edge
    (package / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\nimport pkg.sub\nA = 1\n")
    (package / "b.py").write_text("def f():\n    from .sub import a\n    return a\nB = 2\n")
    graph = import_graph(package)
    assert graph["pkg.sub.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub", "pkg.sub.a"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"pkg.b", "pkg.sub.a"} <= set(cycle)
    (package / "b.py").write_text("B = 2\n")
    assert find_cycle(import_graph(package)) is None


# ------------------------------------------------------------------------------ config file round trips


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "opt" / "ml")


def on_disk(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def test_hyperparameters_file_round_trip(paths: Paths) -> None:
    values = {"epochs": "10", "optimizer": '"adam"', "raw": "adam", "sagemaker_program": '"train.py"'}
    hyperparameters_file.write(paths, values)
    assert on_disk(paths.hyperparameters_file) == values  # a flat object of strings, as SageMaker writes
    assert hyperparameters_file.read(paths) == values
    env = TrainingEnv.from_env({}, paths.base_dir, detect_devices=False)
    assert env.hyperparameters_raw == values and env.hyperparameters["epochs"] == 10


def test_hyperparameters_file_refuses_what_it_would_not_read(paths: Paths) -> None:
    with pytest.raises(ConfigError, match=r"hyperparameters\.json: epochs: value 3 is a JSON number"):
        hyperparameters_file.write(paths, {"epochs": 3})  # type: ignore[dict-item]
    assert not paths.input_config_dir.exists() or not list(paths.input_config_dir.iterdir())
    assert hyperparameters_file.read(paths) == {}


def test_resource_config_round_trip_has_the_platforms_shape(paths: Paths) -> None:
    config = ResourceConfig.homogeneous("algo-2", ["algo-2", "algo-1"], "ml.m5.large")
    resource_config_file.write(paths, config)
    job = TrainingJobSpec(job_name="j", hyperparameters={}, instance_count=2, instance_type="ml.m5.large")
    assert on_disk(paths.resource_config_file) == job.resource_config("algo-2")
    assert resource_config_file.read(paths) == config
    env = TrainingEnv.from_env({}, paths.base_dir, detect_devices=False)
    assert (env.hosts, env.current_host, env.current_instance_type) == (("algo-1", "algo-2"), "algo-2", "ml.m5.large")
    assert env.instance_groups == (InstanceGroup("homogeneousCluster", "ml.m5.large", ("algo-1", "algo-2")),)


def test_heterogeneous_resource_config_round_trip(paths: Paths) -> None:
    config = ResourceConfig(
        current_host="algo-3", hosts=("algo-1", "algo-2", "algo-3"), current_instance_type="ml.c5.xlarge",
        current_group_name="train2", network_interface_name="eth1",
        instance_groups=(InstanceGroup("train1", "ml.p3.16xlarge", ("algo-2", "algo-1")),
                         InstanceGroup("train2", "ml.c5.xlarge", ("algo-3",))),
        topology=({"hostName": "algo-1", "capacityUnitId": "cu-1"},),
    )
    resource_config_file.write(paths, config)
    written = on_disk(paths.resource_config_file)
    assert isinstance(written, dict) and written["topology"] == [{"hostName": "algo-1", "capacityUnitId": "cu-1"}]
    assert written["instance_groups"][0] == {"instance_group_name": "train1", "instance_type": "ml.p3.16xlarge",
                                             "hosts": ["algo-2", "algo-1"]}
    assert resource_config_file.read(paths) == config


def test_missing_resource_config_is_one_host(paths: Paths) -> None:
    config = resource_config_file.read(paths)
    assert (config.hosts, config.current_host) == (("algo-1",), "algo-1")
    assert config.document == {"current_host": "algo-1", "hosts": ["algo-1"]}


def test_input_data_config_round_trip_has_the_platforms_shape(paths: Paths, tmp_path: Path) -> None:
    channels = [
        Channel("train", "File", "text/csv", "ShardedByS3Key", "None", None, paths.channel_dir("train")),
        Channel("stream", "Pipe", None, "FullyReplicated", "RecordIO", "Gzip", paths.channel_dir("stream")),
        Channel("val.x-1_y", "FastFile", None, "FullyReplicated", "None", None, paths.channel_dir("val.x-1_y")),
    ]
    input_data_config_file.write(paths, channels)
    requested = [
        ChannelSpec("train", tmp_path, content_type="text/csv", distribution="ShardedByS3Key"),
        ChannelSpec("stream", tmp_path, input_mode="Pipe", record_wrapper="RecordIO", compression="Gzip"),
        ChannelSpec("val.x-1_y", tmp_path, input_mode="FastFile"),
    ]
    assert on_disk(paths.input_data_config_file) == {c.name: c.to_input_data_config() for c in requested}
    read = input_data_config_file.read(paths)
    assert list(read.values()) == channels
    env = TrainingEnv.from_env({}, paths.base_dir, detect_devices=False)
    assert list(env.channels.values()) == channels
    assert env.input_data_config == on_disk(paths.input_data_config_file)


def test_input_data_config_keeps_the_entry_as_read(paths: Paths) -> None:
    paths.input_config_dir.mkdir(parents=True)
    paths.input_data_config_file.write_text('{"train": {}}')
    (channel,) = input_data_config_file.read(paths).values()
    assert (channel.input_mode, channel.s3_distribution_type, channel.config) == ("File", "FullyReplicated", {})
