"""The format registry: lookup by platform, backend and file, and missing toolchains."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models import write_affine
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.backends.spec import BackendSpec, Capabilities
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import config as cfg


def _never_loads(config: mc.ModelConfig, path: Path, index: int, count: int) -> ModelInstance:
    raise AssertionError("a format without its toolchain must not reach its loader")


FAKE = BackendSpec(
    platform="fake_platform",
    backend="fake",
    default_filename="model.fake",
    loader=_never_loads,
    requires=("numpy", "warpserve_no_such_package"),
    install_hint="pip install warpserve-no-such-package",
)


@pytest.fixture
def fake_format() -> Iterator[BackendSpec]:
    formats.register(FAKE)
    yield FAKE
    formats._SPECS.pop(FAKE.platform)


def test_onnx_is_found_by_platform_backend_and_file(tmp_path: Path) -> None:
    onnx = formats.by_platform("onnxruntime_onnx")
    assert onnx is not None and onnx.backend == "onnxruntime"
    assert formats.by_backend("onnxruntime") is onnx
    assert formats.platform_of(mc.ModelConfig(backend="onnxruntime")) == "onnxruntime_onnx"
    assert onnx.capabilities == Capabilities(inline=True, gpu=True, cpu_pair=True)
    write_affine(tmp_path, golden=False)
    assert formats.guess(tmp_path / "affine" / "1") is onnx
    assert formats.guess(tmp_path) is None


def test_every_builtin_spec_is_consistent() -> None:
    seen_files = set()
    for spec in formats.specs():
        assert formats.by_platform(spec.platform) is spec
        assert formats.by_backend(spec.backend) is spec
        assert spec.default_filename not in seen_files, "guessing by file would be ambiguous"
        seen_files.add(spec.default_filename)
        keys = [p.key for p in spec.parameters]
        assert len(keys) == len(set(keys))


def test_unknown_platform_lists_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"'nope'.*onnxruntime_onnx \(backend onnxruntime\)"):
        formats.loader_for(mc.ModelConfig(name="m", platform="nope"))


def test_missing_toolchain_names_the_package(fake_format: BackendSpec) -> None:
    assert fake_format.missing_packages() == ["warpserve_no_such_package"]
    with pytest.raises(ModelLoadError) as caught:
        formats.loader_for(mc.ModelConfig(name="m", backend="fake"))
    message = str(caught.value)
    assert "warpserve_no_such_package" in message and "fake_platform" in message
    assert "numpy" not in message.split("package(s)")[1]  # installed ones are not blamed
    assert "pip install warpserve-no-such-package" in message


def test_completion_refuses_a_format_without_its_toolchain(
    fake_format: BackendSpec, tmp_path: Path
) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.fake").write_bytes(b"")
    assert cfg.model_filename(mc.ModelConfig(platform="fake_platform")) == "model.fake"
    with pytest.raises(ModelLoadError, match="warpserve_no_such_package"):
        cfg.complete(mc.ModelConfig(name="m"), version)  # guessed from the file name


def test_installed_toolchain_passes_the_check() -> None:
    onnx = formats.by_platform("onnxruntime_onnx")
    assert onnx is not None
    onnx.check_toolchain("m")  # positive control: onnxruntime is a dependency
