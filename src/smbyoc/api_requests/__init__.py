"""The SageMaker API requests that run a local job on SageMaker (docs/sagemaker-requests.md).

``smbyoc local-train``, ``local-serve`` and ``local-transform`` describe a job; this package turns the same
description into the requests SageMaker takes, checks them offline against botocore's own service model plus the
bring-your-own-container rules the shapes no longer enforce, and can send them with boto3 and follow the job:

* :mod:`.training_job`: ``CreateTrainingJob``;
* :mod:`.transform_job`: ``CreateModel`` + ``CreateTransformJob``;
* :mod:`.endpoint`: ``CreateModel`` (one or more) + ``CreateEndpointConfig`` + ``CreateEndpoint``;
* :mod:`.validate`: the checks; :mod:`.locations`: S3 URIs and image URIs; :mod:`.submit`: boto3.

Importing the package imports none of its modules, botocore or boto3.
"""
