"""The ``context`` passed to handler functions that take one, shaped like multi-model-server's.

sagemaker-inference passes MMS's ``mms.context.Context``; modules written for it touch
``context.system_properties["model_dir"]``, ``context.request_processor[0].get_request_properties()``,
``context.get_request_header(0, name)``, ``context.set_response_content_type(0, value)`` and
``context.set_response_header(0, name, value)``. All of these work here, plus two conveniences for the
SageMaker custom attributes header: :attr:`Context.custom_attributes` and
:meth:`Context.set_custom_attributes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


class RequestProperties(dict[str, str]):
    """Request headers; lookups ignore case (``get("accept")`` and ``get("Accept")`` both work)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(items)
        self._lower = {k.lower(): v for k, v in self.items()}

    def __getitem__(self, key: str) -> str:
        return self._lower[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._lower

    def get(self, key: str, default: Any = None) -> Any:
        return self._lower.get(key.lower(), default)


class RequestProcessor:
    """One request's headers and the response headers/status the handler sets (MMS shape).

    The headers are copied into a :class:`RequestProperties` only when user code asks for them: most
    requests never look, and the copy is measurable on the hot path."""

    def __init__(self, headers: RequestProperties | Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        self._source = headers
        self._request: RequestProperties | None = headers if isinstance(headers, RequestProperties) else None
        self.response_headers: dict[str, str] = {}
        self.status_code: int | None = None
        self.reason_phrase: str | None = None

    def get_request_properties(self) -> RequestProperties:
        if self._request is None:
            source = self._source
            self._request = RequestProperties(source.items() if isinstance(source, Mapping) else source)
        return self._request

    def get_request_property(self, key: str) -> str | None:
        value: str | None = self.get_request_properties().get(key)
        return value

    def add_response_property(self, key: str, value: str) -> None:
        self.response_headers[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self.response_headers

    def report_status(self, code: int, reason: str | None = None) -> None:
        self.status_code = code
        self.reason_phrase = reason


class Context:
    """Per-request (or, for ``model_fn``, per-load) context handed to user functions."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        gpu_id: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": 1,
            "server_name": "smbyoc",
            "server_version": "1",
        }
        self.request_processor = [RequestProcessor(headers)]
        self.metrics: Any = None
        self.manifest: dict[str, Any] = {"model": {"modelName": model_name}}

    @property
    def request_ids(self) -> dict[int, str]:
        inference_id = self.request_processor[0].get_request_property("X-Amzn-SageMaker-Inference-Id")
        return {0: inference_id or ""}

    def get_request_id(self, idx: int = 0) -> str:
        return self.request_ids.get(idx, "")

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> RequestProperties:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "Content-Type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.request_processor[idx].response_headers.get("Content-Type")

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int = 0) -> dict[str, str]:
        return self.request_processor[idx].response_headers

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def get_response_status(self, idx: int = 0) -> tuple[int | None, str | None]:
        processor = self.request_processor[idx]
        return processor.status_code, processor.reason_phrase

    # SageMaker custom attributes -----------------------------------------------------------------
    @property
    def custom_attributes(self) -> str | None:
        """The request's ``X-Amzn-SageMaker-Custom-Attributes`` header, or None."""
        return self.request_processor[0].get_request_property(CUSTOM_ATTRIBUTES)

    def set_custom_attributes(self, value: str) -> None:
        """Set the response's ``X-Amzn-SageMaker-Custom-Attributes`` (forwarded verbatim by SageMaker)."""
        self.set_response_header(0, CUSTOM_ATTRIBUTES, value)
