"""``smbyoc push``: tag and push an image to a registry or to Amazon ECR, and print the digest URI SageMaker
should be given (``<registry>/<name>@sha256:...``).

* :mod:`~smbyoc.push.repository` — ``--repository`` parsed and checked (Docker's grammar, ECR's naming rules);
* :mod:`~smbyoc.push.credentials` — registry credentials, ECR's token decoded;
* :mod:`~smbyoc.push.lifecycle` — ECR lifecycle policies built and checked offline;
* :mod:`~smbyoc.push.ecr` — GetAuthorizationToken, the repository created when missing;
* :mod:`~smbyoc.push.registry` — tag and push through the Docker Engine, progress per layer;
* :mod:`~smbyoc.push.manifest` — the pushed manifest read back (Registry HTTP API v2), its media type judged;
* :mod:`~smbyoc.push.gate` — the validate gate;
* :mod:`~smbyoc.push.run` — all of it as one call, :func:`~smbyoc.push.run.push`.
"""

from __future__ import annotations

from smbyoc.push.ecr import RepositorySettings
from smbyoc.push.run import PushRequest, PushResult, push

__all__ = ["PushRequest", "PushResult", "RepositorySettings", "push"]
