"""SageMaker Python SDK v2 local mode, timed (run by bench/emulator_bench.py with a bench-only venv's python).

    python sdk_local_mode.py train IMAGE WORKDIR       -> JSON {"import_s", "fit_s"}
    python sdk_local_mode.py deploy IMAGE MODEL_TAR WORKDIR PORT BODY -> JSON {"import_s", "deploy_s", "usable_s", ...}
    python sdk_local_mode.py transform IMAGE MODEL_TAR WORKDIR INPUT_DIR OUTPUT_DIR CONTENT_TYPE SPLIT STRATEGY MB
        -> JSON {"import_s", "transform_s"}   (Model.transformer(...).transform(..., wait=True))

Offline set-up, all legitimate SDK options: fake credentials and AWS_DEFAULT_REGION in the environment (set by
the caller), `LocalSession` with a local `boto3.Session`, `file://` input/output/model URIs, an explicit role ARN,
`session.config = {"local": {...}}` (container_root, serving_port) instead of ~/.sagemaker/config.yaml, and
TelemetryOptOut in the session's SDK-defaults config (otherwise every fit/deploy ends with a telemetry GET to S3).
One benchmark-only patch: the SDK publishes the serving port as "<port>:8080" (all interfaces); it is rewritten
to "127.0.0.1:<port>:8080" so nothing listens beyond loopback.
"""

import json
import sys
import time

began = time.monotonic()
import boto3  # noqa: E402
from sagemaker.estimator import Estimator  # noqa: E402
from sagemaker.local import LocalSession  # noqa: E402
from sagemaker.local import image as local_image  # noqa: E402
from sagemaker.model import Model  # noqa: E402
from sagemaker.predictor import Predictor  # noqa: E402

import_s = time.monotonic() - began
ROLE = "arn:aws:iam::000000000000:role/bench"
_create_docker_host = local_image._SageMakerContainer._create_docker_host


def _loopback_ports(self, *args, **kwargs):
    config = _create_docker_host(self, *args, **kwargs)
    if "ports" in config:
        config["ports"] = [f"127.0.0.1:{p}" for p in config["ports"]]
    return config


local_image._SageMakerContainer._create_docker_host = _loopback_ports


def session(workdir, port=None):
    s = LocalSession(boto_session=boto3.Session(region_name="us-east-1"))
    s.config = {"local": {"local_code": True, "container_root": workdir, **({"serving_port": port} if port else {})}}
    s.sagemaker_config = {
        "SchemaVersion": "1.0",
        "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
    }  # no S3 telemetry call
    return s


def train(image, workdir):
    import os

    os.makedirs(f"{workdir}/data", exist_ok=True)
    with open(f"{workdir}/data/x.csv", "w") as f:
        f.write("1,2,3\n")
    estimator = Estimator(
        image_uri=image,
        role=ROLE,
        instance_type="local",
        instance_count=1,
        output_path=f"file://{workdir}/out",
        sagemaker_session=session(workdir),
    )
    t0 = time.monotonic()
    estimator.fit({"train": f"file://{workdir}/data"}, wait=True, logs=False)
    return {"import_s": import_s, "fit_s": time.monotonic() - t0}


def deploy(image, model_tar, workdir, port, body):
    model = Model(
        image_uri=image, model_data=f"file://{model_tar}", role=ROLE, sagemaker_session=session(workdir, int(port))
    )
    t0 = time.monotonic()
    try:
        model.deploy(initial_instance_count=1, instance_type="local")
    except BaseException:
        if model.endpoint_name:
            model.sagemaker_session.delete_endpoint(model.endpoint_name)  # stops the compose process
        raise
    deploy_s = time.monotonic() - t0
    predictor = Predictor(model.endpoint_name, sagemaker_session=model.sagemaker_session)
    try:
        answer = predictor.predict(
            body.encode(), initial_args={"ContentType": "application/json", "Accept": "application/json"}
        )
        usable_s = time.monotonic() - t0
    finally:
        predictor.delete_endpoint()
        model.delete_model()
    return {
        "import_s": import_s,
        "deploy_s": deploy_s,
        "usable_s": usable_s,
        "answer": answer.decode() if isinstance(answer, bytes) else str(answer),
    }


def transform(image, model_tar, workdir, input_dir, output_dir, content_type, split_type, strategy, max_payload):
    model = Model(image_uri=image, model_data=f"file://{model_tar}", role=ROLE, sagemaker_session=session(workdir))
    transformer = model.transformer(
        instance_count=1, instance_type="local", strategy=strategy, assemble_with="Line",
        output_path=f"file://{output_dir}", accept=content_type, max_payload=int(max_payload),
    )
    t0 = time.monotonic()
    try:
        transformer.transform(f"file://{input_dir}", content_type=content_type, split_type=split_type, wait=True,
                              logs=False)
    finally:
        model.delete_model()
    return {"import_s": import_s, "transform_s": time.monotonic() - t0}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    actions = {"train": train, "deploy": deploy, "transform": transform}
    result = actions[command](*rest)
    print("RESULT " + json.dumps(result), flush=True)
