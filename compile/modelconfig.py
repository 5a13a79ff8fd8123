"""The ModelConfig a variant is measured and served with."""

from __future__ import annotations

import numpy as np

from warpserve.compile.specs import TensorSpec
from warpserve.protos import model_config_pb2 as mc
from warpserve.server import dtypes


def output_specs(names: list[str], arrays: dict[str, np.ndarray]) -> list[TensorSpec]:
    return [
        TensorSpec(n, tuple(arrays[n].shape[1:]), dtypes.from_numpy(arrays[n].dtype).wire)
        for n in names
    ]


def base_config(
    name: str,
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if platform:
        config.platform = platform
    for spec in inputs:
        config.input.append(
            mc.ModelInput(name=spec.name, data_type=_config_type(spec), dims=spec.dims or (1,))
        )
    for spec in outputs:
        config.output.append(
            mc.ModelOutput(name=spec.name, data_type=_config_type(spec), dims=spec.dims or (1,))
        )
    return config


def _config_type(spec: TensorSpec) -> str:
    return mc.DataType.Name(dtypes.BY_WIRE[spec.dtype].config)  # the stubs take names
