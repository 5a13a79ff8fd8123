"""Backends: one small interface, one implementation per model format.

A backend turns a version folder plus its completed config into model instances
(``warpserve.server.batching.executor.ModelInstance``). The config's platform or
backend field picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import config as cfg

# (config, version folder, instance index, instance count) -> instance
Loader = Callable[[mc.ModelConfig, Path, int, int], ModelInstance]


def _onnxruntime() -> Loader:
    from warpserve.server.backends.onnxruntime import load_instance

    return load_instance


_LOADERS: dict[str, Callable[[], Loader]] = {"onnxruntime_onnx": _onnxruntime}


def register(platform: str, factory: Callable[[], Loader]) -> None:
    """Make ``platform`` loadable (the factory imports the backend lazily)."""
    _LOADERS[platform] = factory


def loader_for(config: mc.ModelConfig) -> Loader:
    platform = cfg.platform_of(config)
    factory = _LOADERS.get(platform)
    if factory is None:
        known = ", ".join(sorted(_LOADERS))
        raise ModelLoadError(
            f"model '{config.name}': platform/backend '{platform or '(none)'}' is not "
            f"available in this server; available: {known}"
        )
    return factory()
