"""The provider registry: records validate themselves, selection explains refusals."""

from __future__ import annotations

from typing import Any

import pytest

from warpserve.kernels import registry
from warpserve.kernels.errors import ProviderUnavailable
from warpserve.kernels.registry import Provider, register, select

CPU = frozenset({"cpu"})
CUDA = frozenset({"cuda"})
MODULE = "warpserve.kernels.mlp"


def _provider(op: str, name: str, devices: frozenset[str] = CPU, **kw: Any) -> Provider:
    return Provider(op, name, devices, MODULE, "fused_linear_reference", **kw)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "fortran"}, "must be one of"),
        ({"devices": frozenset({"tpu"})}, "subset of"),
        ({"devices": frozenset()}, "non-empty"),
        ({"module": "os.path"}, "must live in warpserve.kernels"),
        ({"op": "not an op"}, "identifier"),
        ({"takes": "jax"}, "numpy or torch"),
    ],
)
def test_a_provider_record_validates_itself(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "op": "reg_validate",
        "name": "numba",
        "devices": CPU,
        "module": MODULE,
        "function": "fused_linear_reference",
    }
    with pytest.raises(ValueError, match=message):
        Provider(**{**fields, **kwargs})


def test_registering_another_record_under_a_taken_name_raises() -> None:
    register(_provider("reg_dup", "numpy"))
    register(_provider("reg_dup", "numpy"))  # the same record again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register(_provider("reg_dup", "numpy", rank=5))


def test_auto_takes_the_best_ranked_available_provider_for_the_device() -> None:
    register(_provider("reg_auto", "numpy", rank=100))
    register(_provider("reg_auto", "numba", rank=10))
    register(_provider("reg_auto", "triton", CUDA, rank=1))
    assert select("reg_auto", "cpu").name == "numba"
    assert select("reg_auto", "cuda").name == "triton"


def test_auto_skips_a_provider_whose_package_is_missing() -> None:
    register(_provider("reg_missing", "numpy", rank=100))
    register(_provider("reg_missing", "numba", rank=1, requires=("warpserve_no_such_pkg",)))
    assert select("reg_missing", "cpu").name == "numpy"


def test_an_explicit_provider_that_cannot_run_says_why() -> None:
    register(_provider("reg_why", "numba", requires=("warpserve_no_such_pkg",)))
    register(_provider("reg_why", "cupy", CUDA))
    with pytest.raises(ProviderUnavailable, match="needs warpserve_no_such_pkg, not installed"):
        select("reg_why", "cpu", "numba")
    with pytest.raises(ProviderUnavailable, match="runs on cuda, not cpu"):
        select("reg_why", "cpu", "cupy")


def test_an_unknown_provider_name_lists_the_registered_ones() -> None:
    register(_provider("reg_names", "numpy"))
    register(_provider("reg_names", "numba"))
    with pytest.raises(ProviderUnavailable, match="registered: numba, numpy"):
        select("reg_names", "cpu", "fortran")
    with pytest.raises(ProviderUnavailable, match="no providers registered"):
        select("reg_nothing", "cpu")


def test_no_provider_for_a_device_lists_each_reason() -> None:
    register(_provider("reg_none", "numpy"))
    with pytest.raises(ProviderUnavailable, match=r"no provider runs on cuda.*numpy: runs on cpu"):
        select("reg_none", "cuda")


def test_an_interpreted_provider_runs_on_cpu_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = register(_provider("reg_interp", "triton", CUDA, interpreter_env="WS_TEST_INTERP"))
    register(_provider("reg_interp", "numpy"))
    monkeypatch.delenv("WS_TEST_INTERP", raising=False)
    with pytest.raises(ProviderUnavailable, match="set WS_TEST_INTERP=1"):
        select("reg_interp", "cpu", "triton")
    monkeypatch.setenv("WS_TEST_INTERP", "1")
    assert select("reg_interp", "cpu", "triton") is gpu
    assert select("reg_interp", "cpu").name == "numpy"  # auto never interprets


def test_load_returns_the_named_entry_point() -> None:
    from warpserve.kernels.mlp import fused_linear_reference

    assert _provider("reg_load", "numpy").load() is fused_linear_reference
    assert registry.providers("reg_load") == ()


PROBED: list[str] = []


def probe_refuses() -> str | None:
    PROBED.append("refuses")
    return "no driver here"


def probe_accepts() -> str | None:
    PROBED.append("accepts")
    return None


def test_one_name_on_two_devices_picks_the_record_for_the_input_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_entry_point", _with_test_probes(registry._entry_point))
    cpu = register(_provider("reg_two", "numba"))
    gpu = register(_provider("reg_two", "numba", CUDA, probe="warpserve.kernels.test:accepts"))
    assert select("reg_two", "cpu", "numba") is cpu
    assert select("reg_two", "cuda", "numba") is gpu
    assert select("reg_two", "cuda") is gpu
    with pytest.raises(ValueError, match="already registered for cpu"):
        register(_provider("reg_two", "numba", frozenset({"cpu", "cuda"}), rank=3))


def test_a_probe_runs_only_when_the_device_fits_and_its_reason_is_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_entry_point", _with_test_probes(registry._entry_point))
    PROBED.clear()
    register(_provider("reg_probe", "numpy"))
    register(_provider("reg_probe", "numba", CUDA, probe="warpserve.kernels.test:refuses"))
    assert select("reg_probe", "cpu").name == "numpy"
    assert PROBED == []  # a CPU selection never asks the GPU's probe
    with pytest.raises(ProviderUnavailable, match="'numba' is unavailable: no driver here"):
        select("reg_probe", "cuda", "numba")
    with pytest.raises(ProviderUnavailable, match="numba: no driver here"):
        select("reg_probe", "cuda")
    assert PROBED == ["refuses"]  # asked once, remembered
    with pytest.raises(ValueError, match=r"must be 'warpserve\.kernels\.module:function'"):
        _provider("reg_probe_bad", "numba", probe="os:getcwd")


def _with_test_probes(real: Any) -> Any:
    def entry_point(module: str, function: str) -> Any:
        if module == "warpserve.kernels.test":
            return {"refuses": probe_refuses, "accepts": probe_accepts}[function]
        return real(module, function)

    return entry_point


def test_the_numba_cuda_probe_answers_under_the_simulator() -> None:
    pytest.importorskip("numba")
    from numba import config

    from warpserve.kernels import cuda_probe

    reason = cuda_probe.numba_cuda_reason()
    if getattr(config, "ENABLE_CUDASIM", 0):
        assert reason is None
    else:
        assert reason is None or "numba.cuda" in reason
