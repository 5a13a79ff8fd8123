"""Run a built variant the way the server will: through its own backend classes.

The variant's folder is opened as a version folder with the config it would be served
with, by the backend the server registers for the target's platform. A platform this
server has no backend for (yet) is run in-process by torch so that it can still be checked
and measured, and is marked not servable: it is reported, never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpserve.compile.modelconfig import base_config
from warpserve.compile.specs import TensorSpec
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as backend_spec
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import config as cfg


@dataclass
class Runner:
    instance: ModelInstance
    servable: bool
    note: str  # how it runs: the backend, or why in-process

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.instance.execute(inputs))

    def close(self) -> None:
        self.instance.close()


def measuring_config(
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
) -> mc.ModelConfig:
    # One instance with every core: the sweep measures one run at a time.
    config = base_config("compile", platform, inputs, outputs, max_batch_size)
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    return config


def open_runner(
    platform: str,
    path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
) -> Runner:
    """Open the model file ``path``, inside its version folder, for checking and measuring."""
    config = measuring_config(platform, inputs, outputs, max_batch_size)
    try:
        loader = backend_spec.loader_for(config)
    except ModelLoadError as exc:
        names = ([s.name for s in inputs], [s.name for s in outputs])
        return _in_process(platform, path, str(exc), names)
    done = cfg.complete(config, path.parent)
    instance = loader(done, path.parent, 0, 1)
    return Runner(instance, True, f"server backend for {platform}")


def _in_process(platform: str, path: Path, why: str, names: tuple[list[str], list[str]]) -> Runner:
    from warpserve.compile import inprocess

    instance = inprocess.open_instance(platform, path, *names)
    if instance is None:
        raise ModelLoadError(why)
    return Runner(instance, False, f"in-process torch (not servable here: {why})")
