"""Every command has help with an example and appears in the README; the README's variable table is current."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from smbyoc.cli import _register, cli
from smbyoc.cli.env_vars_cmd import markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands() -> list[str]:
    _register()
    return sorted(cli.commands)


def test_core_commands_are_registered() -> None:
    assert {"local-train", "env-vars"} <= set(commands())


@pytest.mark.parametrize("name", commands())
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "-h"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`smbyoc {name} --help` shows no example"
    assert f"smbyoc {name}" in README, f"README does not mention `smbyoc {name}`"


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("smbyoc, version ")


def test_readme_environment_table_is_generated_from_the_registry() -> None:
    start = README.index("<!-- env-vars:start -->") + len("<!-- env-vars:start -->")
    end = README.index("<!-- env-vars:end -->")
    assert README[start:end].strip() == markdown_table().strip(), (
        "README's environment variable table is stale: run `smbyoc env-vars --markdown` and paste it"
    )


def test_importing_smbyoc_has_no_side_effects(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import logging, os, sys; before = set(os.listdir('.'));"
        "import smbyoc, smbyoc.paths, smbyoc.training, smbyoc.environment_variables, smbyoc.cli;"
        "assert set(os.listdir('.')) == before;"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers;"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules and 'flask' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
