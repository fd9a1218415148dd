"""``smbyoc env-vars``: the environment variables smbyoc reads, from the one registry."""

from __future__ import annotations

import click

from smbyoc.environment_variables import REGISTRY


def markdown_table() -> str:
    lines = [
        "| Variable | Side | Set by | Type | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a bare | would end the cell (e.g. "sync|gthread")

    for var in REGISTRY.values():
        default = var.default_text if var.default_text is not None else var.default
        shown = "" if default is None or default == "" else f"`{default}`"
        lines.append(
            f"| `{var.name}` | {var.scope} | {var.set_by} | {cell(var.type_name)} | {cell(shown)} | {cell(var.help)} |"
        )
    return "\n".join(lines)


@click.command("env-vars")
@click.option("--markdown", is_flag=True, help="Print the Markdown table used in the README.")
def env_vars(markdown: bool) -> None:
    """List every environment variable smbyoc reads, with type, default and meaning.

    \b
    Example:
      smbyoc env-vars --markdown > table.md
    """
    if markdown:
        click.echo(markdown_table())
        return
    for var in REGISTRY.values():
        default = var.default_text if var.default_text is not None else var.default
        click.echo(f"{var.name} ({var.scope}, {var.type_name}, default {default!r}): {var.help}")


COMMANDS = [env_vars]
