"""Models, endpoint configurations and endpoints on :class:`~smbyoc.emulator.hosted_endpoint.HostedEndpoint`.

CreateModel and CreateEndpointConfig store their (validated) requests. CreateEndpoint stores the endpoint as
``Creating`` and starts it in a thread: the endpoint's models and configuration become the document of
``local-serve --endpoint-config`` (:func:`smbyoc.emulator.endpoint_config.parse_endpoint_config`, with its checks
and the ``s3://`` model data staged through the cache), and a HostedEndpoint serves it, its front on a loopback
port of its own; the endpoint is then ``InService``, or ``Failed`` with the reason. The API server passes the
Runtime API's ``InvokeEndpoint`` on to that front (:meth:`Hosting.front_url`).

The messages follow the service's where they are known ("Could not find model ...", "Cannot create already
existing endpoint ..."; the SageMaker Python SDK matches on the latter). After a restart of the server, endpoints
stored as ``InService`` (or still ``Creating``) are started again from their stored model and configuration (they
are ``Creating`` meanwhile); one that cannot start is ``Failed`` with the reason.

UpdateEndpoint deploys blue/green, as SageMaker does without a ``DeploymentConfig`` ("all at once"): the endpoint
is ``Updating`` (with ``PendingDeploymentSummary``) while a second HostedEndpoint (green) is built from the new
configuration and started beside the serving one (blue), which answers every invocation meanwhile; once green is
healthy, invocations go to green, the description takes the new ``EndpointConfigName`` and ``InService``, and blue
is stopped (requests it is answering get its front's grace period). When green cannot start, it is removed and the
endpoint goes back to ``InService`` on blue with ``FailureReason`` set, as the service rolls back a failed update
(cleared by the next successful update). DeleteEndpoint during an update stops both.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import ApiError, validation
from smbyoc.api.jobs import Resources, arn, page
from smbyoc.api.timestamps import now, time_filtered
from smbyoc.errors import SmbyocError

log = logging.getLogger(__name__)

RUNNING = ("Creating", "Updating", "InService")
#: The statuses in which an endpoint answers invocations (an update keeps the serving endpoint until it switches).
SERVING = ("InService", "Updating")
#: UpdateEndpoint's ``ExcludeRetainedVariantProperties`` that are emulated (``DataCaptureConfig`` is "Not
#: currently supported" by the service itself: BOTO-SM ``VariantPropertyType``).
RETAINED_PROPERTIES = ("DesiredWeight", "DesiredInstanceCount")


@dataclass
class _Live:
    """An endpoint being started or serving."""

    endpoint: Any = None
    staging: Any = None
    deleted: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: Set (under ``lock``) once the starting thread is done with the endpoint: from then on, whoever deletes
    #: the endpoint closes it; before, the starting thread does.
    served: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The endpoint an UpdateEndpoint is starting beside this one (module docstring), until it serves or fails.
    green: _Live | None = None


class Hosting(Resources):
    """The models, endpoint configurations and endpoints of one server."""

    def __init__(self, store: stores.Store, *, mode: str, region: str, s3_endpoint_url: str | None,
                 logs_dir: Path) -> None:
        super().__init__(store, mode=mode, region=region, s3_endpoint_url=s3_endpoint_url, logs_dir=logs_dir)
        self.live: dict[str, _Live] = {}
        self.lock = threading.RLock()

    def arn(self, kind: str, name: str) -> str:
        return arn(self.region, kind, name)

    # ------------------------------------------------------------------------------------------- models
    def create_model(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["ModelName"]
        arn = self.arn("model", name)
        if "PrimaryContainer" not in request and not request.get("Containers"):
            raise validation("PrimaryContainer or Containers is required")
        with self.lock:
            if self.store.find(stores.MODELS, name, case_insensitive=True) is not None:
                raise validation(f'Cannot create already existing model "{arn}".')
            description = {k: v for k, v in request.items() if k != "Tags"}
            self.store.put(stores.MODELS, name, {**description, "ModelArn": arn, "CreationTime": now(),
                                                 "_Request": request})
        return {"ModelArn": arn}

    def describe_model(self, request: dict[str, Any]) -> dict[str, Any]:
        return _public(self._get(stores.MODELS, request["ModelName"], "model"))

    def delete_model(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._get(stores.MODELS, request["ModelName"], "model")
        self.store.delete(stores.MODELS, item["ModelName"])
        return {}

    def list_models(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self._filtered(stores.MODELS, "ModelName", request)
        summaries = [{"ModelName": i["ModelName"], "ModelArn": i["ModelArn"], "CreationTime": i["CreationTime"]}
                     for i in items]
        return page(summaries, request, "Models", {"Name": "ModelName", "CreationTime": "CreationTime"})

    # ------------------------------------------------------------------------------------------- configs
    def create_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["EndpointConfigName"]
        arn = self.arn("endpoint-config", name)
        with self.lock:
            if self.store.find(stores.ENDPOINT_CONFIGS, name, case_insensitive=True) is not None:
                raise validation(f'Cannot create already existing endpoint configuration "{arn}".')
            seen: set[str] = set()
            for variant in (*request["ProductionVariants"], *(request.get("ShadowProductionVariants") or ())):
                if variant["VariantName"] in seen:
                    raise validation(f"Variant name {variant['VariantName']!r} is used more than once: variant names "
                                     "are unique across production and shadow variants.")
                seen.add(variant["VariantName"])
                model = variant.get("ModelName")
                if model is not None and self.store.find(stores.MODELS, model) is None:
                    raise validation(f'Could not find model "{self.arn("model", model)}".')
            description = {k: v for k, v in request.items() if k != "Tags"}
            self.store.put(stores.ENDPOINT_CONFIGS, name, {**description, "EndpointConfigArn": arn,
                                                           "CreationTime": now(), "_Request": request})
        return {"EndpointConfigArn": arn}

    def describe_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        return _public(self._get(stores.ENDPOINT_CONFIGS, request["EndpointConfigName"], "endpoint configuration",
                                 "endpoint-config"))

    def delete_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._get(stores.ENDPOINT_CONFIGS, request["EndpointConfigName"], "endpoint configuration",
                         "endpoint-config")
        self.store.delete(stores.ENDPOINT_CONFIGS, item["EndpointConfigName"])
        return {}

    def list_endpoint_configs(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self._filtered(stores.ENDPOINT_CONFIGS, "EndpointConfigName", request)
        summaries = [{"EndpointConfigName": i["EndpointConfigName"], "EndpointConfigArn": i["EndpointConfigArn"],
                      "CreationTime": i["CreationTime"]} for i in items]
        return page(summaries, request, "EndpointConfigs",
                    {"Name": "EndpointConfigName", "CreationTime": "CreationTime"})

    # ------------------------------------------------------------------------------------------- endpoints
    def create_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["EndpointName"]
        arn = self.arn("endpoint", name)
        if "DeploymentConfig" in request:
            raise validation("DeploymentConfig is not emulated by smbyoc api (a new endpoint starts at once)")
        with self.lock:
            if self.store.find(stores.ENDPOINTS, name, case_insensitive=True) is not None:
                raise validation(f'Cannot create already existing endpoint "{arn}".')
            config = self._get(stores.ENDPOINT_CONFIGS, request["EndpointConfigName"], "endpoint configuration",
                               "endpoint-config")
            stamp = now()
            self.store.put(stores.ENDPOINTS, name, {
                "EndpointName": name, "EndpointArn": arn, "EndpointConfigName": config["EndpointConfigName"],
                "EndpointStatus": "Creating", "CreationTime": stamp, "LastModifiedTime": stamp,
                "_Config": config["_Request"], "_Models": self._models_of(config["_Request"]),
            })
            self._start(name)
        return {"EndpointArn": arn}

    def describe_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._get(stores.ENDPOINTS, request["EndpointName"], "endpoint")
        answer = _public(item)
        live = self.live.get(item["EndpointName"])
        endpoint = live.endpoint if live is not None else None
        if item["EndpointStatus"] in SERVING and endpoint is not None and endpoint.router is not None:
            why = endpoint._exit_reason()
            if why is not None and item["EndpointStatus"] == "InService":
                item = self.store.update(stores.ENDPOINTS, item["EndpointName"], EndpointStatus="Failed",
                                         FailureReason=f"an instance of the endpoint stopped: {why}",
                                         LastModifiedTime=now()) or item
                return _public(item)
            described = endpoint.describe()
            for key in ("ProductionVariants", "ShadowProductionVariants", "DataCaptureConfig"):
                if key in described:
                    answer[key] = described[key]
        return answer

    def delete_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._get(stores.ENDPOINTS, request["EndpointName"], "endpoint")
        name = item["EndpointName"]
        with self.lock:
            self.store.delete(stores.ENDPOINTS, name)
            live = self.live.pop(name, None)
        if live is not None:
            with live.lock:
                live.deleted.set()
                close = live.served
                if live.green is not None:  # an update in progress: its thread stops the new endpoint
                    live.green.deleted.set()
            if close:
                threading.Thread(target=self._close, args=(live,), name=f"delete-{name}", daemon=True).start()
        return {}

    def list_endpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self._filtered(stores.ENDPOINTS, "EndpointName", request)
        if "StatusEquals" in request:
            items = [i for i in items if i["EndpointStatus"] == request["StatusEquals"]]
        summaries = [{k: i[k] for k in ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime",
                                        "EndpointStatus")} for i in items]
        return page(summaries, request, "Endpoints",
                    {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"})

    def update_weights(self, request: dict[str, Any]) -> dict[str, Any]:
        from smbyoc.emulator.front import FrontError

        item = self._get(stores.ENDPOINTS, request["EndpointName"], "endpoint")
        live = self.live.get(item["EndpointName"])
        if item["EndpointStatus"] != "InService" or live is None or live.endpoint is None:
            raise validation(f'Cannot update in-progress endpoint "{item["EndpointArn"]}".')
        try:
            live.endpoint.update_weights(request["DesiredWeightsAndCapacities"])
        except FrontError as e:
            raise validation(e.message) from e
        self.store.update(stores.ENDPOINTS, item["EndpointName"], LastModifiedTime=now())
        return {"EndpointArn": item["EndpointArn"]}

    def update_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        """UpdateEndpoint: blue/green, all at once (module docstring)."""
        if "DeploymentConfig" in request:
            raise validation("DeploymentConfig is not emulated by smbyoc api (UpdateEndpoint shifts all traffic at "
                             "once, as the service does without one)")
        excluded = [entry["VariantPropertyType"] for entry in request.get("ExcludeRetainedVariantProperties") or ()]
        if excluded and not request.get("RetainAllVariantProperties"):
            raise validation("ExcludeRetainedVariantProperties needs RetainAllVariantProperties set to true")
        for kind in excluded:
            if kind not in RETAINED_PROPERTIES:
                raise validation(f"ExcludeRetainedVariantProperties {kind} is not supported (the variant property "
                                 f"types that are: {', '.join(RETAINED_PROPERTIES)})")
        item = self._get(stores.ENDPOINTS, request["EndpointName"], "endpoint")
        name = item["EndpointName"]
        with self.lock:
            item = self.store.get(stores.ENDPOINTS, name) or item
            blue = self.live.get(name)
            if item["EndpointStatus"] == "Failed":
                raise validation(f'Cannot update failed endpoint "{item["EndpointArn"]}"; DeleteEndpoint is the '
                                 "only operation on a failed endpoint.")
            if item["EndpointStatus"] != "InService" or blue is None or blue.endpoint is None or not blue.served \
                    or blue.green is not None:
                raise validation(f'Cannot update in-progress endpoint "{item["EndpointArn"]}".')
            stored = self._get(stores.ENDPOINT_CONFIGS, request["EndpointConfigName"], "endpoint configuration",
                               "endpoint-config")
            config = dict(stored["_Request"])
            models = self._models_of(config)
            if request.get("RetainAllVariantProperties"):
                config = _retained(config, blue.endpoint.describe().get("ProductionVariants") or [], excluded)
            stamp = now()
            self.store.update(stores.ENDPOINTS, name, EndpointStatus="Updating", LastModifiedTime=stamp,
                              PendingDeploymentSummary={"EndpointConfigName": stored["EndpointConfigName"],
                                                        "StartTime": stamp})
            green = blue.green = _Live()
            green.thread = threading.Thread(target=self._update, name=f"update-{name}", daemon=True,
                                            args=(name, blue, green, stored["EndpointConfigName"], config, models))
            green.thread.start()
        return {"EndpointArn": item["EndpointArn"]}

    def front_url(self, name: str) -> str | None:
        """The URL of the front of the endpoint ``name`` (the case as created), when it answers invocations
        (``InService``, or ``Updating``: the serving endpoint until the new one takes over)."""
        item = self.store.get(stores.ENDPOINTS, name)
        live = self.live.get(name)
        if item is None or item["EndpointStatus"] not in SERVING or live is None or live.endpoint is None:
            return None
        return str(live.endpoint.url)

    # ------------------------------------------------------------------------------------------- lifetime
    def recover(self) -> None:
        """Start again the endpoints a previous server had running (module docstring)."""
        for item in self.store.all(stores.ENDPOINTS):
            if item["EndpointStatus"] in RUNNING:
                name = item["EndpointName"]
                log.info("starting endpoint %s again (it was %s)", name, item["EndpointStatus"])
                # an update the last server did not finish is dropped: the endpoint comes back on its old config
                self.store.update(stores.ENDPOINTS, name, EndpointStatus="Creating", LastModifiedTime=now(),
                                  PendingDeploymentSummary=None)
                with self.lock:
                    self._start(name)

    def shutdown(self) -> None:
        """Stop every endpoint's instances and front (their stored status stays: a restart starts them again)."""
        with self.lock:
            lives = list(self.live.values())
            self.live.clear()
        for live in lives:
            with live.lock:
                live.deleted.set()
                close = live.served
                green = live.green
            if green is not None:  # an update in progress: its thread stops the new endpoint
                green.deleted.set()
                if green.thread is not None:
                    green.thread.join()
            if live.thread is not None:
                live.thread.join()
            if close:
                self._close(live)

    # ------------------------------------------------------------------------------------------- helpers
    def _start(self, name: str) -> None:
        live = _Live()
        self.live[name] = live
        live.thread = threading.Thread(target=self._serve, args=(name, live), name=f"endpoint-{name}", daemon=True)
        live.thread.start()

    def _serve(self, name: str, live: _Live) -> None:
        item = self.store.get(stores.ENDPOINTS, name)
        if item is None:
            return
        try:
            endpoint = self._build(name, live, item["_Config"], item["_Models"])
        except (SmbyocError, OSError) as e:
            log.info("endpoint %s failed: %s", name, e)
            self._close(live)
            self.store.update(stores.ENDPOINTS, name, EndpointStatus="Failed", FailureReason=str(e),
                              LastModifiedTime=now())
            return
        except Exception as e:
            log.exception("endpoint %s", name)
            self._close(live)
            self.store.update(stores.ENDPOINTS, name, EndpointStatus="Failed",
                              FailureReason=f"{type(e).__name__}: {e}", LastModifiedTime=now())
            return
        with live.lock:
            live.served = not live.deleted.is_set()
            if live.served:
                self.store.update(stores.ENDPOINTS, name, EndpointStatus="InService", LastModifiedTime=now())
        if not live.served:
            self._close(live)
            return
        log.info("endpoint %s in service at %s", name, endpoint.url)

    def _build(self, name: str, live: _Live, config: dict[str, Any], models: list[dict[str, Any]]) -> Any:
        """The HostedEndpoint of ``config`` and ``models`` in ``live``, started unless ``live`` is deleted
        meanwhile (raises what parsing or starting raises; the caller closes ``live``)."""
        from smbyoc.emulator.endpoint_config import parse_endpoint_config
        from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions
        from smbyoc.s3.staging import Staging
        from smbyoc.serving.ports import free_port

        live.staging = Staging(endpoint_url=self.s3_endpoint_url, progress=lambda line: log.info("%s: %s", name, line))
        document = {"EndpointName": name, "Models": models, "EndpointConfig": config}
        definition = parse_endpoint_config(document, source=f"endpoint {name}", base_dir=Path.cwd(),
                                           staging=live.staging)
        options = HostingOptions(mode=self.mode, port=free_port(), port_is_free_choice=True,
                                 s3_endpoint_url=self.s3_endpoint_url)
        client = None
        if self.mode == "docker":
            from smbyoc.docker.client import get_client

            client = get_client()
        endpoint = HostedEndpoint(definition, options, client=client, sink=self._sink(name))
        live.endpoint = endpoint
        if not live.deleted.is_set():
            endpoint.start()
        return endpoint

    def _update(self, name: str, blue: _Live, green: _Live, config_name: str, config: dict[str, Any],
                models: list[dict[str, Any]]) -> None:
        """UpdateEndpoint's thread: start green beside blue, then switch to green and stop blue, or roll back."""
        failure: str | None = None
        try:
            self._build(name, green, config, models)
        except (SmbyocError, OSError) as e:
            failure = str(e)
        except Exception as e:
            log.exception("update of endpoint %s", name)
            failure = f"{type(e).__name__}: {e}"
        with self.lock:
            current = self.live.get(name) is blue and not green.deleted.is_set()
            if current:
                blue.green = None
                if failure is None:
                    green.served = True
                    self.live[name] = green
                    self.store.update(stores.ENDPOINTS, name, EndpointConfigName=config_name, _Config=config,
                                      _Models=models, EndpointStatus="InService", FailureReason=None,
                                      PendingDeploymentSummary=None, LastModifiedTime=now())
                else:
                    log.info("update of endpoint %s failed, rolled back: %s", name, failure)
                    self.store.update(stores.ENDPOINTS, name, EndpointStatus="InService",
                                      FailureReason=f"Update to endpoint configuration {config_name} failed and was "
                                                    f"rolled back: {failure}",
                                      PendingDeploymentSummary=None, LastModifiedTime=now())
        if not current or failure is not None:  # deleted or shut down meanwhile, or failed: green goes
            self._close(green)
            return
        log.info("endpoint %s updated to %s, in service at %s", name, config_name, green.endpoint.url)
        with blue.lock:
            blue.deleted.set()
        self._close(blue)

    @staticmethod
    def _close(live: _Live) -> None:
        if live.endpoint is not None:
            try:
                live.endpoint.close()
            except Exception as e:
                log.warning("could not stop endpoint %s: %s", live.endpoint.definition.endpoint_name, e)
        if live.staging is not None:
            live.staging.close()

    def _sink(self, name: str) -> Any:
        return self._log_sink(f"endpoint-{name}")

    def _models_of(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        names = []
        for variant in (*config["ProductionVariants"], *(config.get("ShadowProductionVariants") or ())):
            model = variant.get("ModelName")
            if model is not None and model not in names:
                names.append(model)
        models = []
        for model in names:
            item = self.store.get(stores.MODELS, model)
            if item is None:
                raise validation(f'Could not find model "{self.arn("model", model)}".')
            models.append(item["_Request"])
        return models

    def _get(self, kind: str, name: str, what: str, arn_kind: str | None = None) -> dict[str, Any]:
        stored = self.store.find(kind, name, case_insensitive=True)
        item = self.store.get(kind, stored) if stored is not None else None
        if item is None:
            raise ApiError("ValidationException",
                           f'Could not find {what} "{self.arn(arn_kind or what, name)}".')
        return item

    def _filtered(self, kind: str, name_key: str, request: dict[str, Any]) -> list[dict[str, Any]]:
        items = self.store.all(kind)
        if "NameContains" in request:
            items = [i for i in items if request["NameContains"].lower() in i[name_key].lower()]
        return time_filtered(items, request)


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """The description without the stored requests (``_...``) and the members unset later (None)."""
    return {k: v for k, v in item.items() if not k.startswith("_") and v is not None}


def _retained(config: dict[str, Any], current: list[dict[str, Any]], excluded: list[str]) -> dict[str, Any]:
    """``config`` with the current weight and instance count of each production variant that it names too
    (RetainAllVariantProperties), except the properties ``excluded`` (ExcludeRetainedVariantProperties)."""
    now_serving = {v["VariantName"]: v for v in current}
    variants = []
    for requested in config["ProductionVariants"]:
        old = now_serving.get(requested["VariantName"])
        variant = dict(requested)
        if old is not None:
            if "DesiredWeight" not in excluded and "CurrentWeight" in old:
                variant["InitialVariantWeight"] = old["CurrentWeight"]
            if "DesiredInstanceCount" not in excluded and "ServerlessConfig" not in variant and \
                    old.get("CurrentInstanceCount"):
                variant["InitialInstanceCount"] = old["CurrentInstanceCount"]
        variants.append(variant)
    return {**config, "ProductionVariants": variants}
