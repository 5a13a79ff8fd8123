"""Model formats: one typed ``BackendSpec`` per format, found through one registry.

The server (config completion, loading), ``compile/`` and the demo learn about a model
format only from its spec: Triton's platform and backend names, the default file name,
the loader, the Python packages it needs, its capabilities and its typed parameters.

Adding a format
---------------
1. Write ``server/backends/<format>.py``. It holds the instance class (the
   ``ModelInstance`` protocol: ``execute(inputs) -> outputs`` and ``close()``; ``execute``
   runs on a worker thread and should release the GIL while it computes) and a
   module-level ``SPEC = BackendSpec(...)``.
2. The module must import without its toolchain: import ``torch``, ``tensorrt`` and the
   like inside the loader, and name them in ``requires`` so that a server without them
   marks such a model FAILED with the missing package named, and keeps serving the rest.
3. Declare every config parameter the backend reads in ``parameters`` (see
   ``warpserve.server.repository.parameters``) and read it only through that declaration.
4. Add the module's name to ``BUILTIN_FORMATS`` below. Nothing else needs to change: the
   repository finds version folders by ``default_filename``, config completion asks
   ``read_signature`` and ``gpu_available``, loading calls ``loader``.
Tests for a format go to ``tests/server/backends/test_<format>.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository.parameters import Parameter

# (completed config, version folder, instance index, instance count) -> one instance
Loader = Callable[[mc.ModelConfig, Path, int, int], ModelInstance]

BUILTIN_FORMATS = ("onnxruntime", "torchscript", "aoti", "tensorrt", "kernels")


@dataclass(frozen=True)
class TensorSignature:
    """A tensor as the model file declares it: wire dtype ("FP32"...), dims with -1 for
    a variable size, the batch dimension included."""

    name: str
    wire: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    # The largest batch the file allows (a TensorRT profile's bound); 0: no bound known.
    max_batch_size: int = 0


@dataclass(frozen=True)
class Capabilities:
    # May run on the event-loop thread when a batch takes microseconds (execution=auto).
    inline: bool = False
    # Has a GPU path; KIND_AUTO becomes KIND_GPU where gpu_available() says so.
    gpu: bool = False
    # Can replay CUDA graphs captured per batch size.
    cuda_graphs: bool = False
    # Triton's default of two instances for a KIND_CPU group without a count.
    cpu_pair: bool = False


def _never() -> bool:
    return False


@dataclass(frozen=True)
class BackendSpec:
    platform: str  # Triton's platform field ("onnxruntime_onnx")
    backend: str  # Triton's backend field ("onnxruntime")
    default_filename: str  # the model file inside a version folder
    loader: Loader
    description: str = ""
    requires: tuple[str, ...] = ()  # import names of the packages the loader needs
    install_hint: str = ""  # how to get them ("pip install 'warpserve[torch]'")
    capabilities: Capabilities = field(default_factory=Capabilities)
    parameters: tuple[Parameter[Any], ...] = ()
    gpu_available: Callable[[], bool] = _never
    # Reads inputs/outputs from the model file, to complete a config that omits them.
    read_signature: Callable[[Path], Signature] | None = None

    def __post_init__(self) -> None:
        if not self.platform or not self.backend or not self.default_filename:
            raise ValueError(f"{self!r}: platform, backend and default_filename are required")

    def missing_packages(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def check_toolchain(self, model: str) -> None:
        """Raise ModelLoadError naming the packages this format needs and lacks here."""
        missing = self.missing_packages()
        if missing:
            hint = f"; {self.install_hint}" if self.install_hint else ""
            raise ModelLoadError(
                f"model '{model}': platform {self.platform} needs the Python package(s) "
                f"{', '.join(missing)}, which this server does not have{hint}"
            )

    def model_path(self, config: mc.ModelConfig, version_dir: Path) -> Path:
        return version_dir / (config.default_model_filename or self.default_filename)


_SPECS: dict[str, BackendSpec] = {}
_loaded_builtins = False


def register(spec: BackendSpec) -> None:
    """Add a format (replacing one with the same platform name)."""
    _SPECS[spec.platform] = spec


def specs() -> list[BackendSpec]:
    _load_builtins()
    return list(_SPECS.values())


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for name in BUILTIN_FORMATS:
        module = importlib.import_module(f"warpserve.server.backends.{name}")
        spec = module.SPEC
        _SPECS.setdefault(spec.platform, spec)


def by_platform(platform: str) -> BackendSpec | None:
    _load_builtins()
    return _SPECS.get(platform)


def by_backend(backend: str) -> BackendSpec | None:
    return next((s for s in specs() if s.backend == backend), None)


def platform_of(config: mc.ModelConfig) -> str:
    """The config's platform, or the platform its backend field names."""
    if config.platform:
        return config.platform
    spec = by_backend(config.backend)
    return spec.platform if spec is not None else config.backend


def find(config: mc.ModelConfig) -> BackendSpec | None:
    return by_platform(config.platform) if config.platform else by_backend(config.backend)


def spec_for(config: mc.ModelConfig) -> BackendSpec:
    """The config's format, or ModelLoadError listing the formats this server knows."""
    spec = find(config)
    if spec is None:
        known = ", ".join(f"{s.platform} (backend {s.backend})" for s in specs())
        named = config.platform or config.backend or "(none)"
        raise ModelLoadError(
            f"model '{config.name}': platform/backend '{named}' is not available in this "
            f"server; available: {known}"
        )
    return spec


def guess(version_dir: Path) -> BackendSpec | None:
    """The format whose default file lies in ``version_dir`` (for configs without one)."""
    return next((s for s in specs() if (version_dir / s.default_filename).exists()), None)


def loader_for(config: mc.ModelConfig) -> Loader:
    spec = spec_for(config)
    spec.check_toolchain(config.name)
    return spec.loader
