"""Graceful shutdown, the command line and the metrics endpoint of a real server process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import (
    AFFINE,
    SLEEPY,
    failure,
    fp32_input,
    health,
    metric_value,
    metrics_text,
    reference,
    rows,
    wait_pending,
)
from tests.e2e.harness import ServerProcess, free_port, start_server
from tests.e2e.held_server import HELD
from warpserve.server.cli import build_parser

pytestmark = pytest.mark.e2e

IN_FLIGHT = 6
EXIT_TIMEOUT_S = 30


def _health_or_gone(url: str) -> str:
    try:
        return health(url)
    except Exception as exc:  # grpc.RpcError once the port closed
        return f"gone: {exc}"


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_sigterm_drains_in_flight_requests(repo: Path, log_dir: Path, event_loop: str) -> None:
    server = start_server(
        repo,
        "--event-loop",
        event_loop,
        "--model-control-mode",
        "explicit",
        "--load-model",
        SLEEPY,
        "--load-model",
        AFFINE,
        "--exit-timeout-secs",
        str(EXIT_TIMEOUT_S),
        log_dir=log_dir,
    )
    try:
        _drain_scenario(server)
    finally:
        server.stop(signal.SIGKILL)


def _drain_scenario(server: ServerProcess) -> None:
    inputs = [rows(1 + i % 2, seed=300 + i) for i in range(IN_FLIGHT)]

    def slow_call(x: np.ndarray) -> np.ndarray:
        with grpcclient.InferenceServerClient(server.url) as triton:
            return triton.infer(SLEEPY, [fp32_input(x)], client_timeout=60).as_numpy("OUTPUT0")

    with (
        ThreadPoolExecutor(IN_FLIGHT) as pool,
        grpcclient.InferenceServerClient(server.url) as late,
    ):
        futures = [pool.submit(slow_call, x) for x in inputs]
        # sleepy runs one request at a time (~0.1 s each): all of them are in the server now.
        wait_pending(server, SLEEPY, IN_FLIGHT)
        server.process.send_signal(signal.SIGTERM)

        deadline = time.monotonic() + 10
        while (state := _health_or_gone(server.url)) == "SERVING":
            assert time.monotonic() < deadline, "health still SERVING 10 s after SIGTERM"
            time.sleep(0.005)
        assert state == "NOT_SERVING", state

        code, message = failure(lambda: late.infer(AFFINE, [fp32_input(rows(1, seed=1))]))
        assert code == "UNAVAILABLE" and "shutting down" in message, message
        assert not late.is_server_ready()
        assert not late.is_model_ready(AFFINE)

        for x, future in zip(inputs, futures, strict=True):
            np.testing.assert_allclose(future.result(), reference(x), rtol=1e-5, atol=1e-5)

    assert server.process.wait(timeout=EXIT_TIMEOUT_S + 15) == 0, server.log()
    with grpcclient.InferenceServerClient(server.url) as after:
        code, _ = failure(lambda: after.is_server_live(client_timeout=5))
    assert code == "UNAVAILABLE"
    log = server.log()
    assert "shutdown complete" in log
    assert log.index("shutting down") < log.index(f"model '{SLEEPY}' version 1 unloaded")


CALLERS = 16


class Caller(threading.Thread):
    """Calls in a closed loop until its first failure, as a client that is told UNAVAILABLE
    and goes elsewhere; checks every answer."""

    def __init__(self, url: str, model: str, seed: int) -> None:
        super().__init__()
        self.url, self.model, self.seed = url, model, seed
        self.answered = 0
        self.failed: tuple[str, str] | None = None

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as triton:
            while self.failed is None:
                x = rows(1, seed=self.seed + self.answered)
                try:
                    got = triton.infer(self.model, [fp32_input(x)], client_timeout=60)
                except InferenceServerException as exc:
                    self.failed = (str(exc.status()).removeprefix("StatusCode."), exc.message())
                    return
                np.testing.assert_allclose(got.as_numpy("OUTPUT0"), reference(x), atol=1e-5)
                self.answered += 1


def test_sigterm_under_load_answers_every_call_it_received(repo: Path, log_dir: Path) -> None:
    # 16 closed-loop callers, half on a model run inline on the event loop, half on one
    # that runs on a worker thread, one request at a time, so calls are in every stage
    # when the signal comes. No call may come back CANCELLED.
    server = start_server(
        repo,
        "--model-control-mode",
        "explicit",
        "--load-model",
        SLEEPY,
        "--load-model",
        AFFINE,
        log_dir=log_dir,
    )
    try:
        callers = [
            Caller(server.url, (AFFINE, SLEEPY)[i % 2], seed=1000 * i) for i in range(CALLERS)
        ]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 60
        while not all(c.answered for c in callers):  # every caller is under way
            assert time.monotonic() < deadline, "the callers never got going"
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(60)
        assert server.process.wait(timeout=60) == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)
    # A caller's first failure is the server's refusal while it drains, or, for one whose
    # last answer came at the end of the drain, finding the server gone when it called
    # again. Never CANCELLED, never a call cut off mid-way.
    refused = 0
    for caller in callers:
        assert caller.failed is not None, "a caller never stopped"
        code, message = caller.failed
        assert code == "UNAVAILABLE", caller.failed
        gone = "failed to connect" in message and "Connection refused" in message
        assert "shutting down" in message or gone, caller.failed
        refused += "shutting down" in message
    assert refused, [caller.failed for caller in callers]
    assert "shutdown complete: every request received was answered" in server.log()


def _start_held(repo: Path, log_dir: Path, exit_timeout: float) -> ServerProcess:
    return start_server(
        repo,
        "--model-control-mode",
        "explicit",
        "--load-model",
        AFFINE,
        "--exit-timeout-secs",
        str(exit_timeout),
        log_dir=log_dir,
        module="tests.e2e.held_server",
    )


def _held_call(server: ServerProcess, pool: ThreadPoolExecutor) -> Future[tuple[str, str]]:
    """A call that stops at the "encoding" point for good; once it is there."""

    def call() -> tuple[str, str]:
        with grpcclient.InferenceServerClient(server.url) as triton:
            x = rows(1, seed=5)
            return failure(lambda: triton.infer(AFFINE, [fp32_input(x)], client_timeout=120))

    future = pool.submit(call)
    _wait_log(server, HELD)
    return future


def _wait_log(server: ServerProcess, text: str) -> None:
    deadline = time.monotonic() + 60
    while text not in server.log():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{server.log()}"
        time.sleep(0.01)  # poll interval


def test_at_the_exit_timeout_held_calls_are_cut_off_counted_and_exit_is_1(
    repo: Path, log_dir: Path
) -> None:
    server = _start_held(repo, log_dir, exit_timeout=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            held = _held_call(server, pool)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=60) == 1, server.log()
            code, message = held.result()
    finally:
        server.stop(signal.SIGKILL)
    assert code == "UNAVAILABLE" and "--exit-timeout-secs" in message, (code, message)
    assert "cut off 1 request (1 call, 0 stream requests)" in server.log()


def test_a_second_signal_exits_at_once(repo: Path, log_dir: Path) -> None:
    server = _start_held(repo, log_dir, exit_timeout=600)  # far longer than the test waits
    try:
        with ThreadPoolExecutor(1) as pool:
            held = _held_call(server, pool)
            server.process.send_signal(signal.SIGTERM)
            _wait_log(server, "shutting down")
            server.process.send_signal(signal.SIGINT)
            assert server.process.wait(timeout=30) == 1, server.log()
            code, _ = held.result()
    finally:
        server.stop(signal.SIGKILL)
    assert code == "UNAVAILABLE"  # the connection closed; not CANCELLED
    assert "SIGINT again: exiting now; cut off 1 request (1 call, 0 stream requests)" in (
        server.log()
    )


def test_sigint_when_idle_exits_zero(repo: Path, log_dir: Path) -> None:
    server = start_server(
        repo, "--model-control-mode", "explicit", "--load-model", AFFINE, log_dir=log_dir
    )
    try:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0, server.log()
    finally:
        server.stop(signal.SIGKILL)


# --- command line ---------------------------------------------------------------------------


TRITON_FLAGS = [
    "--model-repository",
    "--grpc-port",
    "--http-address",
    "--http-port",
    "--allow-http",
    "--metrics-port",
    "--allow-metrics",
    "--model-control-mode",
    "--load-model",
    "--repository-poll-secs",
    "--exit-timeout-secs",
    "--log-verbose",
]


def _serve_flags() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert isinstance(sub.choices, dict)
    serve = sub.choices["serve"]
    return {flag for action in serve._actions for flag in action.option_strings}


def _serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warpserve.server.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_serve_help_lists_every_flag() -> None:
    done = _serve_cli("--help")
    assert done.returncode == 0, done.stderr
    flags = _serve_flags()
    assert set(TRITON_FLAGS) <= flags
    missing = [flag for flag in sorted(flags) if flag not in done.stdout]
    assert not missing, f"serve --help does not mention {missing}:\n{done.stdout}"


def test_unknown_flag_is_rejected() -> None:
    done = _serve_cli("--no-such-flag")
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port", "--http-port"])
def test_a_port_in_use_ends_the_start_in_one_line_before_models_load(repo: Path, flag: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = str(holder.getsockname()[1])
        ports = {
            "--grpc-port": str(free_port()),
            "--metrics-port": str(free_port()),
            "--http-port": str(free_port()),
            flag: busy,
        }
        done = _serve_cli(
            "--model-repository",
            str(repo),
            "--grpc-address",
            "127.0.0.1",
            "--metrics-address",
            "127.0.0.1",
            "--http-address",
            "127.0.0.1",
            *[part for pair in ports.items() for part in pair],
        )
    assert done.returncode == 2, done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "Event loop is closed" not in output, output
    assert done.stderr.count("error") == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert busy in line and flag in line, line
    assert "loaded" not in output and "is ready" not in output, output  # before any model


# --- metrics --------------------------------------------------------------------------------


def _sample(name: str, model: str = AFFINE, **extra: str) -> str:
    labels = {"model": model, "version": "1", **extra}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_metrics_after_requests(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    names = [
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_compute_infer_duration_us",
    ]
    failed = _sample("nv_inference_request_failure", reason="InvalidInput")
    before_text = metrics_text(server.metrics_port)
    before = {n: metric_value(before_text, _sample(n)) or 0.0 for n in names}
    before_failed = metric_value(before_text, failed) or 0.0
    for seed in range(3):
        client.infer(AFFINE, [fp32_input(rows(2, seed=seed))])
    failure(lambda: client.infer(AFFINE, [fp32_input(rows(9, seed=9))]))  # over max batch

    text = metrics_text(server.metrics_port)
    # Triton's names and labels, so its dashboards work unchanged.
    assert 'nv_inference_request_success{model="affine",version="1"}' in text
    after = {n: metric_value(text, _sample(n)) for n in names}
    assert after["nv_inference_request_success"] == before["nv_inference_request_success"] + 3
    assert after["nv_inference_count"] == before["nv_inference_count"] + 6
    assert after["nv_inference_exec_count"] == before["nv_inference_exec_count"] + 3
    assert metric_value(text, failed) == before_failed + 1
    for name in ["nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"]:
        now, then = after[name], before[name]
        assert now is not None and then is not None and now > then, name
    # A tiny model run at once on an idle server never queues and gathers nothing, so
    # these may stay at 0 (as on a fast machine); they must still be exported.
    for name in [
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_output_duration_us",
    ]:
        value = metric_value(text, _sample(name))
        assert value is not None and value >= 0, name
    assert metric_value(text, _sample("nv_inference_pending_request_count")) == 0
    assert metric_value(text, _sample("warpserve_model_version_active")) == 1
