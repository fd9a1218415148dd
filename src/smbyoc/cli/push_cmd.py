"""``smbyoc push``: tag and push an image to a registry or to Amazon ECR (see :mod:`smbyoc.push`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from smbyoc.cli import library_errors
from smbyoc.errors import ConfigError


@click.command("push")
@click.argument("image")
@click.option("--repository", "-r", required=True, metavar="URI",
              help="Where to push: REGISTRY/NAME[:TAG] (the tag defaults to IMAGE's, else latest). With --ecr: "
                   "<account>.dkr.ecr.<region>.amazonaws.com/NAME[:TAG], or NAME[:TAG] alone for your own registry.")
@click.option("--ecr", is_flag=True,
              help="Push to Amazon ECR: credentials from GetAuthorizationToken (boto3's credential chain), the "
                   "repository created when missing.")
@click.option("--region", default=None, help="ECR: the AWS region.  [default: the URI's, else AWS_REGION/config]")
@click.option("--endpoint-url", default=None, help="ECR: the ECR API endpoint (a VPC endpoint, a test server).")
@click.option("--registry-url", default=None, metavar="URL",
              help="ECR: send the layers to this registry (http(s)://host[:port]) instead of the one ECR names, "
                   "e.g. a mirror or a test registry; the printed URI still names ECR's.")
@click.option("--scan-on-push/--no-scan-on-push", default=None,
              help="ECR: basic scanning of each pushed image.  [default: on for a new repository, unchanged "
                   "for an existing one]")
@click.option("--immutable-tags/--mutable-tags", default=None,
              help="ECR: refuse to overwrite an existing tag.  [default: mutable for a new repository, "
                   "unchanged for an existing one]")
@click.option("--lifecycle-policy", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ECR: a lifecycle policy JSON file, checked against ECR's rules before anything is created.")
@click.option("--keep-last", type=click.IntRange(min=1), default=None, metavar="N",
              help="ECR: a lifecycle policy that expires all but the N most recently pushed images.")
@click.option("--skip-validate", is_flag=True,
              help="Push without running `smbyoc validate`'s checks first.")
@click.option("--validate-report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Gate on this `smbyoc validate IMAGE --json FILE` report (same image ID, passed) instead of "
                   "validating again: validate once with --model-data/--payload in CI, then push.")
@click.option("--username", "-u", default=None, help="Registry user name (plain registries; with --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the registry password from standard input.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the digest URI, no progress.")
@library_errors
def push(image: str, repository: str, ecr: bool, region: str | None, endpoint_url: str | None,
         registry_url: str | None, scan_on_push: bool | None, immutable_tags: bool | None,
         lifecycle_policy: Path | None, keep_last: int | None, skip_validate: bool,
         validate_report: Path | None, username: str | None,
         password_stdin: bool, quiet: bool) -> None:
    """Tag IMAGE and push it through the Docker Engine, then print the digest URI
    (REGISTRY/NAME@sha256:...) that SageMaker should be given. Progress goes to stderr; the URI is the last
    line on stdout.

    The image must pass `smbyoc validate` first (--skip-validate to push anyway). The manifest is read back from
    the registry: an OCI manifest or index, which SageMaker refuses, fails the push. Bad input (a malformed
    URI, a name ECR refuses, a lifecycle policy ECR would refuse, missing AWS credentials) is reported before
    anything is created; a failed push removes the ECR repository and the local tag it created.

    \b
    Example:
      smbyoc push my-model:1.0 --ecr --repository my-model --keep-last 20
      smbyoc validate my-model:1.0 --model-data model.tar.gz --json v.json && smbyoc push my-model:1.0 \\
          --ecr -r my-model --validate-report v.json        # validate once in CI, then push
      smbyoc push my-model:1.0 --ecr -r 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/my-model:1.0
      echo "$TOKEN" | smbyoc push my-model:1.0 -r registry.example.com/ml/my-model -u ci --password-stdin
    """
    from smbyoc.push.credentials import RegistryCredentials, password_from_stdin
    from smbyoc.push.ecr import RepositorySettings
    from smbyoc.push.lifecycle import policy_from_options
    from smbyoc.push.run import PushRequest
    from smbyoc.push.run import push as push_image

    if skip_validate and validate_report is not None:
        raise ConfigError("cannot be combined with --skip-validate", key="--validate-report")
    if password_stdin and not username:
        raise ConfigError("needs --username", key="--password-stdin")
    if username and not password_stdin:
        raise ConfigError("needs --password-stdin (passwords are never taken on the command line)", key="--username")
    policy = policy_from_options(lifecycle_policy, keep_last)
    credentials = None
    if username:
        credentials = RegistryCredentials(username=username,
                                          password=password_from_stdin(sys.stdin.read()))
    request = PushRequest(
        image=image, repository=repository, ecr=ecr, region=region, endpoint_url=endpoint_url,
        registry_url=registry_url, skip_validate=skip_validate, validate_report=validate_report,
        credentials=credentials,
        settings=RepositorySettings(scan_on_push=scan_on_push, immutable_tags=immutable_tags,
                                    lifecycle_policy=policy))
    def progress(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    result = push_image(request, progress=progress)
    if not quiet:
        kind = f", {result.media_type}" if result.media_type else ""
        click.echo(f"pushed {result.reference} ({result.digest}{kind}; {result.layers_pushed} layers pushed, "
                   f"{result.layers_present} already there)", err=True)
    click.echo(result.digest_uri)


COMMANDS = [push]
