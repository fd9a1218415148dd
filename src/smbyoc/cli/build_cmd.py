"""``smbyoc build``: build a SageMaker training or serving image (see :mod:`smbyoc.images.builder`)."""

from __future__ import annotations

from pathlib import Path

import click

from smbyoc.cli import library_errors
from smbyoc.errors import ConfigError
from smbyoc.images.variants import VARIANT_NAMES


@click.command("build")
@click.option("--kind", type=click.Choice(["train", "serve"]), default=None,
              help="Training image (`train`) or inference image (`serve`). Required unless --list.")
@click.option("--variant", type=click.Choice(VARIANT_NAMES), default="cpu",
              help="Image variant (images/<variant>/): cpu, cuda, arm64 (Graviton/Neo), ei (migration "
                   "path off Elastic Inference), neuron (Trainium/Inferentia2).")
@click.option("--tag", "-t", default=None, help="Image tag.  [default: smbyoc/<kind>:<variant>]")
@click.option("--context", "code_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Your code directory, baked into the image at /opt/ml/code.")
@click.option("--base-image", default=None,
              help="Base image to build on (must have python3 with venv; nginx for serve). "
                   "[default: the variant's public base, or the local smbyoc/base:bookworm]")
@click.option("--requirements", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Extra Python requirements, resolved on this machine into the image's wheelhouse. "
                   "[default: <context>/requirements.txt when present]")
@click.option("--multi-model", is_flag=True,
              help="Serve images: add the label com.amazonaws.sagemaker.capabilities.multi-models=true, which "
                   "SageMaker requires of a multi-model endpoint's image (the runtime serves the /models API).")
@click.option("--no-cache", is_flag=True, help="Do not use the Docker layer cache.")
@click.option("--emit-context", "emit_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Build nothing: write a self-contained build context to DIR (Dockerfile with the base image "
                   "and labels baked in, wheelhouse, entry point, README.md) that a plain `docker build DIR` or "
                   "`docker buildx build --provenance=false --output type=docker DIR` builds to the same image. "
                   "Prints DIR.")
@click.option("--force", is_flag=True, help="With --emit-context: replace DIR when it is not empty.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result, not the build steps.")
@click.option("--list", "list_images", is_flag=True,
              help="Build nothing: list the smbyoc images in the local engine (tag, variant, kind, platform, size, "
                   "created, source fingerprint, whether stale against this smbyoc's source, capabilities).")
@click.option("--json", "as_json", is_flag=True, help="With --list: print a JSON array instead of a table.")
@library_errors
def build(kind: str | None, variant: str, tag: str | None, code_dir: Path | None, base_image: str | None,
          requirements: Path | None, multi_model: bool, no_cache: bool, emit_dir: Path | None, force: bool,
          quiet: bool, list_images: bool, as_json: bool) -> None:
    """Build a SageMaker image: resolve Python packages on this machine into a wheelhouse, build
    through the Docker Engine (no network inside the build), print the image id and size.
    With --emit-context DIR, write that build context to DIR for `docker build` instead (CodeBuild,
    any CI that runs docker itself); docs/build-context.md.

    \b
    Example:
      smbyoc build --kind serve --variant cpu --tag my-model:serve --context ./code
      smbyoc build --kind train --base-image smbyoc/base:bookworm   # air-gapped (scripts/build-base-image)
      smbyoc build --kind serve --multi-model --tag my-model:mme    # for a multi-model endpoint
      smbyoc build --kind serve --context ./code --emit-context ctx   # then: docker build -t my-model:serve ctx
      smbyoc build --list                                   # what is built here, and what is stale (--json)
    """
    from smbyoc.images.builder import MULTI_MODELS_LABEL, build_image, emit_context

    if list_images:
        given = [name for name, value in (("--kind", kind), ("--tag", tag), ("--context", code_dir),
                                          ("--base-image", base_image), ("--requirements", requirements),
                                          ("--multi-model", multi_model), ("--no-cache", no_cache),
                                          ("--emit-context", emit_dir), ("--force", force)) if value]
        if given or variant != "cpu":
            raise ConfigError(f"builds nothing; it takes only --json, not {', '.join(given) or '--variant'}",
                              key="--list")
        _list(as_json)
        return
    if as_json:
        raise ConfigError("only with --list", key="--json")
    if kind is None:
        raise click.UsageError("Missing option '--kind' (train or serve), or --list.")

    if multi_model and kind != "serve":
        raise ConfigError("only for --kind serve (multi-model endpoints are for inference)", key="--multi-model")
    labels = {MULTI_MODELS_LABEL: "true"} if multi_model else None
    progress = None if quiet else (lambda line: click.echo(line, err=True))
    if emit_dir is None:
        if force:
            raise ConfigError("only with --emit-context DIR (it replaces a non-empty DIR)", key="--force")
        result = build_image(kind, variant, tag, code_dir=code_dir, base_image=base_image,
                             requirements=requirements, nocache=no_cache, labels=labels, progress=progress)
        click.echo(f"{result.tag} {result.image_id} {result.size_mb:.0f} MB")
        return
    if no_cache:
        raise ConfigError("builds nothing with --emit-context; pass it to docker build", key="--no-cache")
    emitted = emit_context(kind, emit_dir, variant, tag, code_dir=code_dir, base_image=base_image,
                           requirements=requirements, labels=labels, force=force, progress=progress)
    click.echo(str(emitted.path))


def _list(as_json: bool) -> None:
    import json

    from smbyoc.docker.client import get_client
    from smbyoc.images.inventory import list_images, table

    found = list_images(get_client())
    if as_json:
        click.echo(json.dumps([image.to_dict() for image in found], indent=2))
    elif found:
        click.echo(table(found))
    else:
        click.echo("no smbyoc images in the local Docker Engine (build one with smbyoc build --kind serve)", err=True)


COMMANDS = [build]
