"""The names of the checks, in the order the suite reports them (light: the CLI imports it for its help)."""

from __future__ import annotations

KIND_CHECK = "kind"
IMAGE_CHECKS = ("platform", "image-size", "user", "entrypoint", "secrets")
TRAINING_CHECKS = ("train-model", "train-config", "train-failure", "train-sigterm")
SERVING_CHECKS = ("serve-ping", "serve-invocations", "serve-payload-limit", "serve-bind-to-port", "serve-sigterm")
ALL_CHECKS = (KIND_CHECK, *IMAGE_CHECKS, *TRAINING_CHECKS, *SERVING_CHECKS)
