"""A served version with a drift reference: live traffic reaches its rolling window
(on worker threads and inline), the alarm shows in metrics and ``warpserve models
status``, and warm-up inputs are no traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.models import write_affine
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.drift.reference import build_reference, write_reference
from warpserve.server.errors import ModelLoadError
from warpserve.server.grpc.admin import model_status
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import RegistryCollector
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.tools.models_cli import status_table

ROWS, REQUESTS = 8, 60


def _params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


def _repository(tmp_path: Path, execution: str) -> Path:
    extra = _params(execution=execution, drift_sample_rate="1", drift_min_rows="300")
    model_dir = write_affine(tmp_path, "affine", (1,), extra=extra)
    training = np.random.default_rng(0).normal(0, 1, (4000, 4)).astype(np.float32)
    write_reference(model_dir / "1", build_reference({"INPUT0": training}))
    return tmp_path


def _metrics(registry: ModelRegistry) -> str:
    prom = CollectorRegistry()
    prom.register(RegistryCollector(registry))
    return generate_latest(prom).decode()


async def _traffic(plane: DataPlane, seed: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    for i in range(REQUESTS):
        x = rng.normal(0, 1, (ROWS, 4)).astype(np.float32)
        x[:, 3] += shift
        await plane.infer(InferRequest("affine", "", str(i), {"INPUT0": x}))


@pytest.mark.parametrize("execution", ["thread", "inline"])
def test_shifted_traffic_raises_the_alarm_and_unshifted_traffic_none(
    tmp_path: Path, execution: str
) -> None:
    async def main() -> tuple[str, str, str, str]:
        registry = ModelRegistry(ModelRepository(_repository(tmp_path, execution)))
        try:
            await registry.load("affine")
            plane = DataPlane(registry)
            await _traffic(plane, 1, 0.0)
            calm = (
                _metrics(registry),
                status_table(model_status("affine", registry.models["affine"])),
            )
            await _traffic(plane, 2, 1.0)
            shifted = (
                _metrics(registry),
                status_table(model_status("affine", registry.models["affine"])),
            )
            return (*calm, *shifted)
        finally:
            await registry.close()

    calm_metrics, calm_status, drifted_metrics, drifted_status = asyncio.run(main())
    labels = 'model="affine",version="1"'
    # Only the served rows: the golden check and warm-up ran before the window opened.
    assert f"warpserve_drift_window_rows{{{labels}}} {REQUESTS * ROWS}.0" in calm_metrics
    assert f"warpserve_drift_alarm{{{labels}}} 0.0" in calm_metrics
    assert "drift: version 1: ok, 480 rows" in calm_status
    assert f"warpserve_drift_alarm{{{labels}}} 1.0" in drifted_metrics
    assert f"warpserve_drift_alarms_total{{{labels}}} 1.0" in drifted_metrics
    assert "drift: version 1: ALARM, 960 rows" in drifted_status
    over = [line for line in drifted_status.splitlines() if line.endswith("over")]
    assert len(over) == 1 and over[0].strip().startswith("INPUT0[3]")


def test_a_version_without_a_reference_exports_no_drift(tmp_path: Path) -> None:
    write_affine(tmp_path, "affine", (1,))

    async def main() -> tuple[str, bool]:
        registry = ModelRegistry(ModelRepository(tmp_path))
        try:
            await registry.load("affine")
            mv = registry.models["affine"].versions[1]
            assert mv.batcher is not None
            observed = any(e.observer is not None for e in mv.batcher.executors)
            return _metrics(registry), observed
        finally:
            await registry.close()

    text, observed = asyncio.run(main())
    assert not observed
    assert "warpserve_drift_psi{" not in text and "# TYPE warpserve_drift_psi gauge" in text


def test_a_malformed_reference_fails_the_load_naming_the_file(tmp_path: Path) -> None:
    model_dir = write_affine(tmp_path, "affine", (1,))
    (model_dir / "1" / "drift_reference.json").write_text("{}")

    async def main() -> None:
        registry = ModelRegistry(ModelRepository(tmp_path))
        try:
            await registry.load("affine")
        finally:
            await registry.close()

    with pytest.raises(ModelLoadError, match=r"version 1: .*drift_reference.json: not a drift"):
        asyncio.run(main())
