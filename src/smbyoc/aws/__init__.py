"""Host-side AWS access (S3, ECR, the SageMaker API): clients and the one place botocore errors are translated."""
