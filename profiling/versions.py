"""A model version loaded for profiling through the server's own backend classes.

What is measured here is what would be served: the same config completion, the same
backend loader and instance class. Nothing here starts a server or imports the
gRPC layer.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import WarpserveError
from warpserve.server.repository import config as cfg
from warpserve.server.repository import versionfolder
from warpserve.server.repository.repository import ModelRepository

GOLDEN_INPUTS = Path(versionfolder.GOLDEN_DIR) / versionfolder.INPUTS_FILE


class ProfileError(Exception):
    """A profile cannot be made or read; the message says what to fix."""


@dataclass
class LoadedVersion:
    model: str
    version: int
    path: Path
    config: mc.ModelConfig
    instance: ModelInstance
    golden: dict[str, np.ndarray]
    load_rss_mb: float

    @property
    def batched(self) -> bool:
        return self.config.max_batch_size > 0

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """``size`` rows cycled from the golden inputs (the golden inputs as they are
        for a model without a batch dimension)."""
        if not self.batched:
            return self.golden
        rows = next(iter(self.golden.values())).shape[0]
        index = np.arange(size) % rows
        return {name: array[index] for name, array in self.golden.items()}

    def close(self) -> None:
        self.instance.close()


def rss_mb() -> float:
    """The process's resident memory now (Linux), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def latest_version(repository: Path, model: str) -> int:
    repo = _repository(repository)
    try:
        folders = repo.version_folders(model, repo.config(model))
    except WarpserveError as exc:
        raise ProfileError(str(exc)) from exc
    if not folders:
        raise ProfileError(f"model '{model}' has no complete version folder in {repository}")
    return folders[-1].version


def _repository(path: Path) -> ModelRepository:
    try:
        return ModelRepository(path)
    except FileNotFoundError as exc:
        raise ProfileError(f"{exc}; pass --model-repository a Triton-layout folder") from exc


def load_version(repository: Path, model: str, version: int) -> LoadedVersion:
    """Load one instance of ``model`` ``version`` with its golden inputs."""
    repo = _repository(repository)
    try:
        config = repo.config(model)
        folder = repo.version_folder(model, version, config)
        config = cfg.complete(config, folder.path)
        golden = _golden_inputs(folder.path)
        before = rss_mb()
        # One instance with every core, as a single-instance config would serve it.
        instance = formats.loader_for(config)(config, folder.path, 0, 1)
    except WarpserveError as exc:
        raise ProfileError(str(exc)) from exc
    return LoadedVersion(
        model, version, folder.path, config, instance, golden, max(0.0, rss_mb() - before)
    )


def _golden_inputs(version_dir: Path) -> dict[str, np.ndarray]:
    try:
        golden = versionfolder.read_golden(version_dir)
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{version_dir}: golden data is not readable .npz: {exc}") from exc
    if golden is None or not golden.inputs:
        raise ProfileError(
            f"{version_dir} has no golden data ({GOLDEN_INPUTS} and outputs.npz): profiles "
            "run a version on its golden inputs, the rows its load check replays"
        )
    return golden.inputs
