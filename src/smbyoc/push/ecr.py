"""Amazon ECR through boto3: the registry's credentials (GetAuthorizationToken) and the repository, created
when missing with the settings asked for (contract-endpoints.md §8.1).

Every call goes through :func:`smbyoc.aws.client.client` (credentials checked up front) and
:func:`~smbyoc.aws.client.translate_aws_errors` (one :class:`~smbyoc.errors.AwsError` line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smbyoc.aws.client import client, translate_aws_errors
from smbyoc.errors import AwsError
from smbyoc.push.credentials import RegistryCredentials, decode_ecr_token

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RepositorySettings:
    """What ``push --ecr`` sets on a repository.

    ``None`` means "not asked": at creation scanning on push is on and tags are mutable; an existing
    repository keeps its setting. An explicit value is applied to an existing repository too.
    """

    scan_on_push: bool | None = None
    immutable_tags: bool | None = None
    lifecycle_policy: str | None = None  # checked text (smbyoc.push.lifecycle)


@dataclass(frozen=True)
class EcrAuthorization:
    credentials: RegistryCredentials
    proxy_endpoint: str  # https://<account>.dkr.ecr.<region>.amazonaws.com
    expires_at: datetime | None

    @property
    def host(self) -> str:
        return self.proxy_endpoint.split("://", 1)[-1].rstrip("/")


class Ecr:
    """One ECR client for one region (and endpoint)."""

    def __init__(self, *, region: str | None = None, endpoint_url: str | None = None) -> None:
        self.client = client("ecr", region=region, endpoint_url=endpoint_url)

    @property
    def region(self) -> str:
        return str(self.client.meta.region_name)

    def authorization(self, registry_id: str | None = None) -> EcrAuthorization:
        """GetAuthorizationToken for ``registry_id`` (the caller's own registry when None)."""
        kwargs: dict[str, Any] = {"registryIds": [registry_id]} if registry_id else {}
        with translate_aws_errors("ECR GetAuthorizationToken"):
            data = self.client.get_authorization_token(**kwargs).get("authorizationData") or []
        if not data or not data[0].get("authorizationToken") or not data[0].get("proxyEndpoint"):
            raise AwsError("ECR GetAuthorizationToken: the answer has no authorization data", code="NoToken")
        item = data[0]
        return EcrAuthorization(credentials=decode_ecr_token(item["authorizationToken"]),
                                proxy_endpoint=str(item["proxyEndpoint"]), expires_at=item.get("expiresAt"))

    def describe(self, name: str, registry_id: str | None) -> dict[str, Any] | None:
        """The repository's description, or None when it does not exist."""
        kwargs = _registry(registry_id)
        try:
            with translate_aws_errors(f"ECR DescribeRepositories {name}"):
                found = self.client.describe_repositories(repositoryNames=[name], **kwargs)["repositories"]
        except AwsError as e:
            if e.code == "RepositoryNotFoundException":
                return None
            raise
        return dict(found[0]) if found else None

    def ensure_repository(self, name: str, registry_id: str | None, settings: RepositorySettings,
                          progress: Progress | None = None) -> bool:
        """Create ``name`` when missing (scan on push, tag mutability, lifecycle policy) or bring the settings
        asked for explicitly onto an existing one. True when this call created it; a creation whose follow-up
        call fails is undone."""
        say = progress or (lambda line: logger.info("%s", line))
        existing = self.describe(name, registry_id)
        if existing is None:
            created = self._create(name, registry_id, settings)
            if created:
                try:
                    if settings.lifecycle_policy is not None:
                        self.put_lifecycle_policy(name, registry_id, settings.lifecycle_policy)
                except BaseException:
                    self.delete_repository(name, registry_id)
                    raise
                scan = settings.scan_on_push is not False
                say(f"created ECR repository {name} (scan on push {'on' if scan else 'off'}, "
                    f"tags {'immutable' if settings.immutable_tags else 'mutable'}"
                    f"{', lifecycle policy' if settings.lifecycle_policy else ''})")
                return True
            existing = self.describe(name, registry_id) or {}
        self._update(name, registry_id, existing, settings, say)
        return False

    def _create(self, name: str, registry_id: str | None, settings: RepositorySettings) -> bool:
        try:
            with translate_aws_errors(f"ECR CreateRepository {name}"):
                self.client.create_repository(
                    repositoryName=name,
                    imageScanningConfiguration={"scanOnPush": settings.scan_on_push is not False},
                    imageTagMutability="IMMUTABLE" if settings.immutable_tags else "MUTABLE",
                    **_registry(registry_id))
        except AwsError as e:
            if e.code == "RepositoryAlreadyExistsException":  # created meanwhile by someone else
                return False
            raise
        return True

    def _update(self, name: str, registry_id: str | None, existing: dict[str, Any], settings: RepositorySettings,
                say: Progress) -> None:
        kwargs = _registry(registry_id)
        scan = existing.get("imageScanningConfiguration", {}).get("scanOnPush")
        if settings.scan_on_push is not None and scan != settings.scan_on_push:
            with translate_aws_errors(f"ECR PutImageScanningConfiguration {name}"):
                self.client.put_image_scanning_configuration(
                    repositoryName=name, imageScanningConfiguration={"scanOnPush": settings.scan_on_push}, **kwargs)
            say(f"ECR repository {name}: scan on push turned {'on' if settings.scan_on_push else 'off'}")
        mutability = existing.get("imageTagMutability")
        if settings.immutable_tags is not None:
            wanted = "IMMUTABLE" if settings.immutable_tags else "MUTABLE"
            if mutability != wanted:
                with translate_aws_errors(f"ECR PutImageTagMutability {name}"):
                    self.client.put_image_tag_mutability(repositoryName=name, imageTagMutability=wanted, **kwargs)
                say(f"ECR repository {name}: tags made {wanted.lower()}")
        if settings.lifecycle_policy is not None:
            self.put_lifecycle_policy(name, registry_id, settings.lifecycle_policy)
            say(f"ECR repository {name}: lifecycle policy set")
        say(f"pushing to the existing ECR repository {name}")

    def put_lifecycle_policy(self, name: str, registry_id: str | None, text: str) -> None:
        with translate_aws_errors(f"ECR PutLifecyclePolicy {name}"):
            self.client.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=text, **_registry(registry_id))

    def delete_repository(self, name: str, registry_id: str | None) -> None:
        """Remove a repository this push created (images included); a failure is logged, not raised."""
        try:
            with translate_aws_errors(f"ECR DeleteRepository {name}"):
                self.client.delete_repository(repositoryName=name, force=True, **_registry(registry_id))
        except AwsError as e:
            logger.warning("could not remove the ECR repository %s created for this push: %s", name, e)


def _registry(registry_id: str | None) -> dict[str, Any]:
    return {"registryId": registry_id} if registry_id else {}
