"""``smbyoc api``: a local server speaking the SageMaker API's wire protocols, backed by smbyoc's engines.

* :mod:`smbyoc.api.wire` — the control plane's JSON 1.1 protocol (``POST /``, ``X-Amz-Target``) and its errors;
* :mod:`smbyoc.api.validation` — requests checked against botocore's service model, errors in SageMaker's words;
* :mod:`smbyoc.api.store` — descriptions persisted on disk (a restart keeps them);
* :mod:`smbyoc.api.jobs` — what the job kinds share (Create's skeleton, Describe, Stop, List, recovery);
* :mod:`smbyoc.api.training` — CreateTrainingJob and friends on :mod:`smbyoc.emulator.training_job`;
* :mod:`smbyoc.api.hosting` — models, endpoint configurations and endpoints on
  :class:`~smbyoc.emulator.hosted_endpoint.HostedEndpoint`;
* :mod:`smbyoc.api.token` — the access token (``--token``);
* :mod:`smbyoc.api.server` — the HTTP server, the dispatch and the Runtime API proxy.

Importing this package imports no engine, no botocore and no Docker SDK.
"""
