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
from smbyoc.api.timestamps import now
from smbyoc.errors import SmbyocError

log = logging.getLogger(__name__)

RUNNING = ("Creating", "Updating", "InService")


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
            for variant in (*request["ProductionVariants"], *(request.get("ShadowProductionVariants") or ())):
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
        if item["EndpointStatus"] == "InService" and endpoint is not None and endpoint.router is not None:
            why = endpoint._exit_reason()
            if why is not None:
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

    def front_url(self, name: str) -> str | None:
        """The URL of the front of the endpoint ``name`` (the case as created), when it is in service."""
        item = self.store.get(stores.ENDPOINTS, name)
        live = self.live.get(name)
        if item is None or item["EndpointStatus"] != "InService" or live is None or live.endpoint is None:
            return None
        return str(live.endpoint.url)

    # ------------------------------------------------------------------------------------------- lifetime
    def recover(self) -> None:
        """Start again the endpoints a previous server had running (module docstring)."""
        for item in self.store.all(stores.ENDPOINTS):
            if item["EndpointStatus"] in RUNNING:
                name = item["EndpointName"]
                log.info("starting endpoint %s again (it was %s)", name, item["EndpointStatus"])
                self.store.update(stores.ENDPOINTS, name, EndpointStatus="Creating", LastModifiedTime=now())
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
        from smbyoc.emulator.endpoint_config import parse_endpoint_config
        from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions
        from smbyoc.s3.staging import Staging
        from smbyoc.serving.ports import free_port

        item = self.store.get(stores.ENDPOINTS, name)
        if item is None:
            return
        try:
            live.staging = Staging(endpoint_url=self.s3_endpoint_url,
                                   progress=lambda line: log.info("%s: %s", name, line))
            document = {"EndpointName": name, "Models": item["_Models"], "EndpointConfig": item["_Config"]}
            definition = parse_endpoint_config(document, source=f"endpoint {name}", base_dir=Path.cwd(),
                                               staging=live.staging)
            options = HostingOptions(mode=self.mode, port=free_port(), s3_endpoint_url=self.s3_endpoint_url)
            client = None
            if self.mode == "docker":
                from smbyoc.docker.client import get_client

                client = get_client()
            endpoint = HostedEndpoint(definition, options, client=client, sink=self._sink(name))
            live.endpoint = endpoint
            if not live.deleted.is_set():
                endpoint.start()
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
        for member, after in (("CreationTimeAfter", True), ("CreationTimeBefore", False)):
            if member in request:
                limit = float(request[member]) if isinstance(request[member], (int, float)) else None
                if limit is not None:
                    items = [i for i in items if (i["CreationTime"] > limit) == after]
        return items


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}
