"""Host side: emulated SageMaker training jobs and endpoints, run as processes or Docker containers."""
