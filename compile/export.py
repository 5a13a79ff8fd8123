"""One ``torch.export`` of the eager module, batch axis dynamic; failures named plainly."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from warpserve.compile.errors import UsageError
from warpserve.compile.source import ModelSource

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(__file__)


@dataclass
class Reference:
    """What eager PyTorch computes on the example rows: the parity reference."""

    output_names: list[str]
    outputs: dict[str, np.ndarray]


def as_tensors(examples: dict[str, np.ndarray], names: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(examples[name])) for name in names]


def run_eager(module: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        result = module(*inputs)
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    arrays = []
    for i, value in enumerate(outputs):
        if not isinstance(value, torch.Tensor):
            raise UsageError(
                f"the model's output {i} is a {type(value).__name__}; compile needs forward() "
                "to return a tensor or a tuple of tensors"
            )
        arrays.append(value.detach().cpu().numpy())
    return arrays


def reference(
    module: nn.Module,
    examples: dict[str, np.ndarray],
    input_names: list[str],
    output_names: list[str] | None,
) -> Reference:
    try:
        arrays = run_eager(module, as_tensors(examples, input_names))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"eager PyTorch failed on the example inputs: {summarize(exc)}; check --input "
            "shapes and dtypes against the model"
        ) from exc
    names = output_names or [f"OUTPUT{i}" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise UsageError(
            f"--output-names lists {len(names)} names but the model returns {len(arrays)} outputs"
        )
    return Reference(names, dict(zip(names, arrays, strict=True)))


def export_program(
    source: ModelSource,
    examples: dict[str, np.ndarray],
    input_names: list[str],
    max_batch_size: int,
) -> torch.export.ExportedProgram:
    """``torch.export`` with dim 0 of every input dynamic in 1..max_batch_size.

    Raises UsageError naming the construct the exporter stopped at (data-dependent control
    flow, a numpy call, an unsupported op) and where in the model's code it is.
    """
    if source.scripted:
        raise UsageError("a TorchScript model cannot be re-exported with torch.export")
    batch = torch.export.Dim("batch", min=1, max=max(max_batch_size, 2))  # max 1 is refused
    arguments = source.argument_names()
    dynamic = {name: {0: batch} for name in arguments[: len(input_names)]}
    # The example batch must be > 1: a size-1 dim would be specialised to a constant.
    top = max(max_batch_size, 2)
    rows = min(max(2, len(next(iter(examples.values())))), top)
    from warpserve.compile.specs import tile_rows

    tensors = as_tensors(tile_rows(examples, rows), input_names)
    try:
        with quiet_torch():
            return torch.export.export(
                source.module, tuple(tensors), dynamic_shapes=dynamic or None, strict=False
            )
    except Exception as exc:
        raise UsageError(f"torch.export cannot handle this model: {summarize(exc)}") from exc


def summarize(exc: BaseException) -> str:
    """The exporter's own first line, plus the model code it stopped at.

    torch's messages run to pages of graph dumps and links; the first line names the
    construct ('Could not guard on data-dependent expression', '.numpy() is not supported',
    an unsupported operator) and the user frame says where it is.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    headline = lines[0] if lines else type(exc).__name__
    where = _quoted_call(lines) or _user_frame(exc)
    text = f"{type(exc).__name__}: {headline}"
    return f"{text} (at {where})" if where else text


def _quoted_call(lines: list[str]) -> str:
    # torch.export quotes the user's frame after "The following call raised this error:".
    for i, line in enumerate(lines):
        if line.startswith("The following call raised this error") and i + 2 < len(lines):
            return f"{lines[i + 1]}: {lines[i + 2]}"
    return ""


def _user_frame(exc: BaseException) -> str:
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)
    ]
    user = [f for f in frames if not f.filename.startswith(_OWN_DIR)]
    if not user:
        return ""
    frame = user[-1]
    return f'File "{frame.filename}", line {frame.lineno}, in {frame.name}: {frame.line}'


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    # The exporters log a warning per missing torchvision op and raise deprecation
    # warnings from torch internals; none of it is actionable for the user.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
