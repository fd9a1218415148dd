"""Small helpers the tests share (a plain module: ``from helpers import free_port``). Nothing here ships in
the package: the runtime and the emulator never need a "free port" or a child `serve` of their own."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cli_runner() -> Any:
    """A click ``CliRunner`` whose results keep stderr apart from stdout on every click smbyoc supports: click
    8.1 (the floor) mixes them unless told ``mix_stderr=False``; 8.2 removed the option and always separates."""
    import inspect

    from click.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def with_request_options(command: Any, kind: str, handler: Any) -> Any:
    """``command`` (a click command carrying ``request_options(kind)``, as every command does) with a body that
    runs ``handler`` (``maybe_print_or_submit_*``) as the command's body does first, then says ``LOCAL JOB``
    instead of running the local job. Its parameters are the command's own, each once (click warns about a
    parameter given twice)."""
    import click

    from smbyoc.cli import library_errors
    from smbyoc.cli.request_options import request_options

    @request_options(kind)  # type: ignore[arg-type]
    def callback(**kwargs: Any) -> None:
        assert not {"print_request", "submit", "role_arn"} & set(kwargs), "the request options reached the body"
        if not handler():
            click.echo("LOCAL JOB")

    own = {param.name for param in command.params}
    missing = [param for param in reversed(callback.__click_params__) if param.name not in own]
    assert not missing, f"{command.name} lacks the {kind} request options {[p.name for p in missing]}"
    return click.Command(command.name, params=list(command.params), callback=library_errors(callback))


def run_on_front_loop(coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run ``coro`` to its end on a new event loop of the kind the endpoint front uses
    (``front.DEFAULT_EVENT_LOOP``, which the ``front_event_loop`` fixture sets), then cancel what it left running
    and close the loop, as ``asyncio.run`` does; ``timeout``: seconds before it is cancelled (None: no limit)."""
    from smbyoc.emulator import front

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    loop = front.new_event_loop(front.DEFAULT_EVENT_LOOP)
    try:
        return loop.run_until_complete(coro if timeout is None else bounded())
    finally:  # (what asyncio.run does after the main coroutine)
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_command(args: Sequence[str] = (), python: str | None = None) -> list[str]:
    """argv that runs ``serve`` with this interpreter (what the ``serve`` console script runs)."""
    return [python or sys.executable, "-m", "smbyoc.serving.main", *args]


def wait_for_file(path: Path, proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``path`` exists (a ``--ready-file``) while ``proc`` runs; whether it appeared."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


#: The linear model of :func:`write_linear_onnx`: y = x @ W + B.
W = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
B = np.array([0.5, -0.5], dtype=np.float32)


def write_linear_onnx(path: Path) -> Path:
    """y = x @ W + B with x: float32[N, 3], y: float32[N, 2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
