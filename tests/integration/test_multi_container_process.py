"""A multi-container endpoint in process mode: two real `serve` processes (nginx + gunicorn) behind the endpoint
front, the preprocessing example in front of the default example's model; Serial chain and Direct routing,
called over HTTP (http.client) like InvokeEndpoint."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator.default_model import default_model
from smbyoc.emulator.multi_container import ContainerSpec, MultiContainerEndpoint, MultiContainerSpec
from smbyoc.emulator.pipeline import CONTAINER_HEADER
from smbyoc.emulator.runtime_client import InvokeError, invoke, request
from smbyoc.examples import default_example, preprocessing

pytestmark = pytest.mark.integration

TARGET = "X-Amzn-SageMaker-Target-Container-Hostname"
FIELDS = ["temperature_f", "vibration_rms", "pressure_psi", "rpm", "current_a", "voltage_v", "humidity_pct",
          "acoustic_db"]
PSI_PER_KPA = 0.14503773773020923


def field_readings(n: int = 6) -> list[dict[str, float | None]]:
    """Validation rows in field units (°F, psi); the last one misses its humidity."""
    with next(default_example().channels["validation"].glob("*.csv")).open() as f:
        rows = list(csv.DictReader(f))[:n]
    readings: list[dict[str, float | None]] = []
    for row in rows:
        values = {k: float(v) for k, v in row.items() if k != "label"}
        readings.append({"temperature_f": values["temperature_c"] * 1.8 + 32, "vibration_rms": values["vibration_rms"],
                         "pressure_psi": values["pressure_kpa"] * PSI_PER_KPA, "rpm": values["rpm"],
                         "current_a": values["current_a"], "voltage_v": values["voltage_v"],
                         "humidity_pct": values["humidity_pct"], "acoustic_db": values["acoustic_db"]})
    readings[-1]["humidity_pct"] = None
    return readings


def features(reading: dict[str, float | None]) -> list[float]:
    """What the preprocessing container must make of a reading (model/scaling.json), computed here on its own."""
    fills = {f["name"]: f["fill"] for f in json.loads((preprocessing.model_dir() / "scaling.json").read_text())[
        "features"]}
    values = dict(reading)
    out = [(values.pop("temperature_f") - 32.0) / 1.8]  # type: ignore[operator]
    out.append(values["vibration_rms"])  # type: ignore[arg-type]
    out.append((values["pressure_psi"] - 0.0) / PSI_PER_KPA)  # type: ignore[operator]
    for name in ("rpm", "current_a", "voltage_v", "humidity_pct", "acoustic_db"):
        out.append(fills[name] if values[name] is None else values[name])  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory, nginx_on_path: str) -> Iterator[dict[str, Any]]:
    """The same two containers as a Serial and as a Direct endpoint."""
    model = default_model("process")  # trained once, cached
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMBYOC_STATE_DIR", str(state))
        made = {}
        try:
            for mode in ("Serial", "Direct"):
                spec = MultiContainerSpec(
                    (ContainerSpec(model_data=preprocessing.model_dir(), hostname="preprocess",
                                   environment=preprocessing.process_environment()),
                     ContainerSpec(model_data=model, hostname="model")),
                    execution_mode=mode, backend="process", port=free_port(), environment=env,
                    startup_health_timeout=120)
                made[mode] = MultiContainerEndpoint(spec, sink=None, require_nginx=True)
                made[mode].start()
            yield made
        finally:
            for endpoint in made.values():
                endpoint.close()
    assert not list(state.rglob("*.json")), "an endpoint record was left behind"


def post(url: str, body: bytes, content_type: str, accept: str = "application/json", **headers: str) -> Any:
    return request(url, "POST", "/invocations", body,
                   {"Content-Type": content_type, "Accept": accept, "Content-Length": str(len(body)), **headers})


def test_serial_pipeline_equals_the_model_given_preprocessed_features(endpoints) -> None:
    readings = field_readings()
    chained = post(endpoints["Serial"].url, json.dumps({"instances": readings}).encode(), "application/json")
    assert chained.status == 200, chained.body
    assert chained.headers[CONTAINER_HEADER] == "model"
    assert chained.content_type == "application/json"
    direct = post(endpoints["Direct"].url, json.dumps({"instances": [features(r) for r in readings]}).encode(),
                  "application/json", **{TARGET: "model"})
    assert direct.status == 200, direct.body
    assert json.loads(chained.body) == json.loads(direct.body)
    assert len(json.loads(chained.body)["predictions"]) == len(readings)
    # The preprocessing mattered: the model given the field readings as they are answers otherwise.
    raw = post(endpoints["Direct"].url, json.dumps({"instances": [[v or 0.0 for v in r.values()] for r in readings]})
               .encode(), "application/json", **{TARGET: "model"})
    assert json.loads(raw.body) != json.loads(direct.body)


def test_serial_pipeline_csv_with_a_header_row(endpoints) -> None:
    readings = field_readings()
    lines = [",".join(FIELDS)] + [",".join("" if r[k] is None else repr(r[k]) for k in FIELDS) for r in readings]
    chained = post(endpoints["Serial"].url, "\n".join(lines).encode(), "text/csv", accept="text/csv")
    assert chained.status == 200, chained.body
    assert chained.content_type == "text/csv"
    direct = post(endpoints["Direct"].url, "\n".join(",".join(repr(v) for v in features(r)) for r in readings)
                  .encode(), "text/csv", accept="text/csv", **{TARGET: "model"})
    assert chained.body == direct.body
    assert len(chained.body.decode().strip().splitlines()) == len(readings)


def test_direct_reaches_the_preprocessing_container_alone(endpoints) -> None:
    readings = field_readings(2)
    answer = post(endpoints["Direct"].url, json.dumps(readings).encode(), "application/json",
                  **{TARGET: "preprocess"})
    assert answer.status == 200 and answer.headers[CONTAINER_HEADER] == "preprocess"
    assert json.loads(answer.body) == {"instances": [features(r) for r in readings]}


def test_serial_error_is_the_failing_containers_answer(endpoints) -> None:
    bad = json.dumps({"instances": [{**field_readings(1)[0], "rpm": "fast"}]}).encode()
    answer = post(endpoints["Serial"].url, bad, "application/json")
    assert answer.status == 400 and answer.headers[CONTAINER_HEADER] == "preprocess"
    assert b"row 0 field 'rpm': expected a number" in answer.body
    with pytest.raises(InvokeError) as info:
        invoke(endpoints["Serial"].url, bad, content_type="application/json")
    assert (info.value.error_code, info.value.status, info.value.original_status) == ("ModelError", 424, 400)


def test_platform_errors_through_the_front(endpoints) -> None:
    one = json.dumps(field_readings(1)).encode()
    answer = post(endpoints["Serial"].url, one, "application/json", **{TARGET: "model"})
    assert answer.status == 400 and answer.headers["X-Amzn-ErrorType"] == "ValidationError"
    answer = post(endpoints["Direct"].url, one, "application/json")
    assert answer.status == 400 and b"is required" in answer.body
    answer = post(endpoints["Direct"].url, one, "application/json", **{TARGET: "nobody"})
    assert answer.status == 400 and b"'nobody' does not exist in the endpoint" in answer.body
    assert request(endpoints["Serial"].url, "GET", "/ping").status == 200


def test_each_container_runs_its_own_serve_with_nginx(endpoints) -> None:
    endpoint = endpoints["Serial"]
    assert endpoint._exit_reason() is None
    assert [m.uses_nginx for m in endpoint.members] == [True, True]
    roots = {Path(m.root).name for m in endpoint.members}
    assert roots == {"preprocess", "model"}
