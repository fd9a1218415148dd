"""``serve``: the program SageMaker runs as ``docker run <image> serve``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from smbyoc.errors import SmbyocError
from smbyoc.logs import configure_logging
from smbyoc.serving.env import ServingEnv

logger = logging.getLogger("smbyoc.serving")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a model for SageMaker: nginx on SAGEMAKER_BIND_TO_PORT (8080) in front of gunicorn "
        "running the Flask app (/ping, /invocations, /execution-parameters; with SAGEMAKER_MULTI_MODEL=true "
        "/ping and the /models routes of multi-model endpoints).",
        epilog="Example: SAGEMAKER_BASE_DIR=/tmp/ml SAGEMAKER_BIND_TO_PORT=8081 serve --no-nginx",
    )
    parser.add_argument("command", nargs="?", choices=["serve"], help="ignored (SageMaker passes `serve`)")
    parser.add_argument("--no-nginx", action="store_true",
                        help="gunicorn binds the port itself (same as SAGEMAKER_USE_NGINX=false)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        env = ServingEnv.from_env()
        if args.no_nginx:
            env = replace(env, use_nginx=False)
        configure_logging(env.log_level)
        logger.info("serving environment: %s", env.to_dict())
        from smbyoc.serving.supervisor import run

        return run(env)
    except SmbyocError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
