"""Fallback models in-process: the fallback answers when the primary raises, is
unavailable, is shedding load, or would miss the deadline; the answer says so and the
answers are counted. Bad input, and a model without a fallback, fail as before."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.models import affine_reference, write_affine, write_golden
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import BackendError, InvalidInput, ModelLoadError
from warpserve.server.grpc.admin import model_status
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import RegistryCollector
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.tools.models_cli import status_table

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
FALLBACK_ANSWER = affine_reference(X, scale=2.0)  # the fallback is affine version 2


def _params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


class Raising:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("the primary broke")

    def close(self) -> None:
        pass


class Gated:
    """Answers zeros once the gate opens; ``started`` is set while a run waits on it."""

    def __init__(self) -> None:
        self.gate, self.started = threading.Event(), threading.Event()

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        assert self.gate.wait(10)
        return {"OUTPUT0": np.zeros((len(inputs["INPUT0"]), 2), np.float32)}

    def close(self) -> None:
        pass


def _repo(tmp_path: Path, batching: str = "", **params: str) -> Path:
    extra = _params(execution="thread", **params)
    write_affine(tmp_path, "primary", (1,), batching=batching, extra=extra)
    write_affine(tmp_path, "backup", (2,))
    return tmp_path


Body = Callable[[ModelRegistry, DataPlane], Awaitable[Any]]


def _serve(repo: Path, body: Body, replace: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        registry = ModelRegistry(ModelRepository(repo))
        try:
            for name in ("backup", "primary"):
                with contextlib.suppress(ModelLoadError):  # a broken primary stays FAILED
                    await registry.load(name)
            for name, instance in (replace or {}).items():
                mv = registry.models[name].versions[max(registry.models[name].versions)]
                assert mv.batcher is not None
                mv.batcher.executors[0].instance = instance
            return await body(registry, DataPlane(registry))
        finally:
            await registry.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def _request(**kw: Any) -> InferRequest:
    return InferRequest("primary", "", "r", {"INPUT0": X}, **kw)


def _metrics(registry: ModelRegistry) -> str:
    prom = CollectorRegistry()
    prom.register(RegistryCollector(registry))
    return generate_latest(prom).decode()


def test_a_failing_primary_is_answered_by_its_fallback_which_says_so(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, plane: DataPlane) -> tuple[Any, ...]:
        request = _request()
        mv, outputs = await plane.infer(request)
        status = status_table(model_status("primary", registry.models["primary"], registry.events))
        return mv.name, outputs, request.response_parameters, _metrics(registry), status

    repo = _repo(tmp_path, fallback_model="backup")
    name, outputs, parameters, metrics, status = _serve(repo, body, {"primary": Raising()})
    assert name == "backup"
    np.testing.assert_allclose(outputs["OUTPUT0"], FALLBACK_ANSWER, rtol=1e-5)
    assert parameters == {"fallback": True, "fallback_from": "primary", "fallback_reason": "error"}
    line = (
        'warpserve_fallback_responses_total{fallback="backup",model="primary",reason="error"} 1.0'
    )
    assert line in metrics
    # The primary's failure still counts against it.
    assert (
        'nv_inference_request_failure{model="primary",reason="BackendError",version="1"} 1.0'
        in metrics
    )
    assert "fallback model: backup (1 answers given)" in status


def test_without_a_fallback_the_error_reaches_the_client(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, plane: DataPlane) -> None:
        with pytest.raises(BackendError, match="the primary broke"):
            await plane.infer(_request())
        assert not registry.events.fallbacks

    _serve(_repo(tmp_path), body, {"primary": Raising()})


def test_bad_input_never_falls_back(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, plane: DataPlane) -> None:
        bad = InferRequest("primary", "", "r", {"INPUT0": np.zeros((2, 3), np.float32)})
        with pytest.raises(InvalidInput):
            await plane.infer(bad)
        assert not registry.events.fallbacks

    _serve(_repo(tmp_path, fallback_model="backup"), body)


def test_a_primary_that_failed_to_load_is_answered_by_its_fallback(tmp_path: Path) -> None:
    repo = _repo(tmp_path, fallback_model="backup")
    write_golden(repo / "primary" / "1", 1, corrupt=True)

    async def body(registry: ModelRegistry, plane: DataPlane) -> tuple[Any, ...]:
        request = _request()
        mv, outputs = await plane.infer(request)
        return mv.name, outputs, request.response_parameters

    name, outputs, parameters = _serve(repo, body)
    assert name == "backup" and parameters["fallback_reason"] == "unavailable"
    np.testing.assert_allclose(outputs["OUTPUT0"], FALLBACK_ANSWER, rtol=1e-5)


def test_a_request_that_would_miss_its_deadline_in_the_queue_goes_to_the_fallback(
    tmp_path: Path,
) -> None:
    gated = Gated()

    async def body(registry: ModelRegistry, plane: DataPlane) -> tuple[Any, ...]:
        blocker = asyncio.ensure_future(plane.infer(_request()))
        await asyncio.to_thread(gated.started.wait, 10)
        late = _request()
        # Leaves the primary's queue 200 ms before its 0.4 s deadline, for the fallback.
        mv, _ = await plane.infer(late, 0.4)
        at_once = _request()
        await plane.infer(at_once, 0.1)  # less than the reserve: straight to the fallback
        gated.gate.set()
        await blocker
        return mv.name, late.response_parameters, at_once.response_parameters

    repo = _repo(tmp_path, fallback_model="backup", fallback_reserve_ms="200")
    name, late, at_once = _serve(repo, body, {"primary": gated})
    assert name == "backup"
    assert late["fallback_reason"] == at_once["fallback_reason"] == "deadline"


def test_a_shed_request_is_answered_by_the_fallback(tmp_path: Path) -> None:
    gated = Gated()

    async def body(registry: ModelRegistry, plane: DataPlane) -> tuple[Any, ...]:
        low = {"priority": 2}
        running = asyncio.ensure_future(plane.infer(_request(parameters=low)))
        await asyncio.to_thread(gated.started.wait, 10)
        queued = asyncio.ensure_future(plane.infer(_request(parameters=low)))
        await asyncio.sleep(0.05)
        shed = _request(parameters=low)
        mv, _ = await plane.infer(shed)
        gated.gate.set()
        await asyncio.gather(running, queued)
        primary = registry.models["primary"].versions[1]
        assert primary.batcher is not None
        return mv.name, shed.response_parameters, primary.batcher.shed

    repo = _repo(tmp_path, "priority_levels: 2", fallback_model="backup", shed_queue_size="0,1")
    name, parameters, shed = _serve(repo, body, {"primary": gated})
    assert name == "backup" and parameters["fallback_reason"] == "shed"
    assert shed == [0, 1]


def test_when_the_fallback_fails_too_the_primarys_error_names_both(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, plane: DataPlane) -> None:
        with pytest.raises(BackendError, match="primary broke; fallback model 'backup' failed"):
            await plane.infer(_request())

    repo = _repo(tmp_path, fallback_model="backup")
    _serve(repo, body, {"primary": Raising(), "backup": Raising()})


def test_a_model_naming_itself_as_fallback_fails_to_load(tmp_path: Path) -> None:
    write_affine(tmp_path, "primary", (1,), extra=_params(fallback_model="primary"))

    async def main() -> None:
        registry = ModelRegistry(ModelRepository(tmp_path))
        try:
            await registry.load("primary")
        finally:
            await registry.close()

    with pytest.raises(ModelLoadError, match="fallback_model names the model itself"):
        asyncio.run(main())
