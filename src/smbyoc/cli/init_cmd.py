"""``smbyoc init NAME``: scaffold a bring-your-own-container project (:mod:`smbyoc.scaffold`)."""

from __future__ import annotations

from pathlib import Path

import click

from smbyoc.cli import library_errors

DEFAULT_REGION = "us-east-1"


@click.command("init")
@click.argument("name")
@click.option("-d", "--directory", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where to create the project; it must not exist or be empty.  [default: ./NAME]")
@click.option("--region", default=DEFAULT_REGION, metavar="REGION",
              help="AWS region written into the GitHub workflow (CodeBuild uses the pipeline's own).")
@click.option("--ci", "ci", default="codebuild,github", metavar="LIST",
              help="CI files to write: codebuild (buildspec.yml, CodePipeline template), github (workflow, "
                   "OIDC role template), both comma-separated, or none.")
@library_errors
def init(name: str, directory: Path | None, region: str, ci: str) -> None:
    """Create a SageMaker bring-your-own-container project NAME that a team can commit as is.

    It holds Dockerfile.train and Dockerfile.serve FROM smbyoc's images, code/train.py and
    code/inference.py (a small working model), sample data, tests/test_project.py (local-train,
    local-serve + invoke, validate), buildspec.yml for CodeBuild, a CodePipeline template (source,
    build, deploy to a SageMaker endpoint) with least-privilege roles, and a GitHub Actions workflow
    with OIDC credentials. NAME (lowercase letters, digits, '-') names the ECR repositories NAME/train
    and NAME/serve, the stacks NAME-pipeline and NAME-endpoint, and the endpoint NAME.

    \b
    Example:
      smbyoc init churn-model
      smbyoc init churn-model --directory ~/src/churn --region eu-west-1 --ci github
    """
    from smbyoc.scaffold.project import ProjectSpec, render_project

    spec = ProjectSpec.create(name, region=region, ci=ci)
    target = directory if directory is not None else Path(name)
    files = render_project(spec, target)
    click.echo(f"created {name} in {target} ({len(files)} files). Next:")
    click.echo(f"  cd {target}")
    click.echo(f"  docker build -f Dockerfile.train -t {spec.name.image('train')} .")
    click.echo(f"  docker build -f Dockerfile.serve -t {spec.name.image('serve')} .")
    click.echo("  python -m pytest        # local-train, local-serve + invoke, validate (README.md has more)")


COMMANDS = [init]
