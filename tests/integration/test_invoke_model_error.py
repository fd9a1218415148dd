"""A container's 4xx/5xx answer reaches the caller as SageMaker's ModelError, worded as SageMaker words it
(`Received client error (4xx) ...` / `Received server error (5xx) from primary with message "..."`), through
the library and through `smbyoc invoke`, against a real HTTP server."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from smbyoc.emulator.runtime_client import InvokeError, invoke

pytestmark = pytest.mark.integration


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers /invocations with the status named in the body, e.g. ``503``."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        status = int(self.rfile.read(int(self.headers["Content-Length"])))
        body = f"model says {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(("status", "kind"), [(400, "client"), (415, "client"), (499, "client"),
                                              (500, "server"), (503, "server")])
def test_model_error_wording(url: str, status: int, kind: str) -> None:
    with pytest.raises(InvokeError) as info:
        invoke(url, str(status).encode())
    error = info.value
    assert (error.error_code, error.status) == ("ModelError", 424)
    assert (error.original_status, error.original_message) == (status, f"model says {status}")
    assert str(error) == (f'ModelError: Received {kind} error ({status}) from primary with message '
                          f'"model says {status}". See the endpoint\'s log for more information.')


def test_invoke_command_prints_the_sagemaker_message(url: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "smbyoc.cli", "invoke", "--url", url, "500"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "OriginalStatusCode: 500" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ['Error: ModelError: Received server error (500) from primary with message "model says 500". '
                      "See the endpoint's log for more information."], proc.stderr
