"""The variants ``compile`` can build: one target per format and precision.

Each builder writes one model file (named as the platform's backend spec says), and the
target's companion files where its format has several, into its own folder, which then
serves as a version folder for measuring (through the server's backend for the target's
platform) and, if the variant is chosen, is copied into the repository. A builder raises
``Skipped`` when its toolchain is absent here (the report lists it with that reason), and
``Refused`` when the model has a structure the target cannot express (the variant is
rejected with that message).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from warpserve.compile.export import as_tensors, export_program, quiet_torch
from warpserve.compile.names import TARGET_NAMES
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import TensorSpec
from warpserve.server.backends import spec as backend_spec

ONNX_OPSET = 18


class Skipped(Exception):
    """The target cannot be built here; the message says why (a missing toolchain)."""


class Refused(Exception):
    """The model cannot be expressed by the target; the message names the module."""


@dataclass
class BuildContext:
    source: ModelSource
    program: torch.export.ExportedProgram | None
    inputs: list[TensorSpec]
    output_names: list[str]
    examples: dict[str, np.ndarray]
    max_batch_size: int
    work: Path
    _onnx: Path | None = field(default=None, repr=False)

    def onnx_file(self) -> Path:
        """The exported ONNX graph, made once and shared by every ONNX-based target."""
        if self._onnx is None:
            path = self.work / "_export" / "model.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(self, path)
            self._onnx = path
        return self._onnx


@dataclass(frozen=True)
class Target:
    name: str
    platform: str
    fallback_filename: str  # for a platform this server has no backend spec for
    precision: str  # fp32, fp16 or int8: picks the parity tolerance
    build: Callable[[BuildContext, Path], None]  # (context, model file to write)
    description: str
    companions: tuple[str, ...] = ()  # further files of the format, beside the model file

    @property
    def filename(self) -> str:
        """The model file's name, as the server's backend spec for the platform has it."""
        spec = backend_spec.by_platform(self.platform)
        return spec.default_filename if spec is not None else self.fallback_filename


def export_onnx(ctx: BuildContext, path: Path) -> None:
    """torch.export program -> ONNX (opset 18, the exporter's lowest native one), batch
    axis dynamic; a TorchScript source goes through the TorchScript exporter instead."""
    import onnx

    names = [spec.name for spec in ctx.inputs]
    with quiet_torch():
        if ctx.program is not None:
            onnx_program = torch.onnx.export(
                ctx.program,
                dynamo=True,
                input_names=names,
                output_names=ctx.output_names,
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            if onnx_program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            onnx_program.save(str(path))
        else:
            axes = {name: {0: "batch"} for name in [*names, *ctx.output_names]}
            torch.onnx.export(
                ctx.source.module,
                tuple(as_tensors(ctx.examples, names)),
                str(path),
                dynamo=False,
                input_names=names,
                output_names=ctx.output_names,
                opset_version=ONNX_OPSET,
                dynamic_axes=axes,
            )
    onnx.checker.check_model(str(path), full_check=True)


def _onnx(ctx: BuildContext, path: Path) -> None:
    shutil.copyfile(ctx.onnx_file(), path)


def _ort(ctx: BuildContext, path: Path) -> None:
    # Saved after ONNX Runtime's full (ORT_ENABLE_ALL) optimisation, so loading it skips
    # that work; the fused kernels it contains are for this kind of CPU.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(ctx.onnx_file()), options, providers=["CPUExecutionProvider"])


def _ort_int8(ctx: BuildContext, path: Path) -> None:
    # Dynamic quantization: INT8 weights, activations quantized per batch at run time, so
    # no calibration pass is needed; MatMul/Gemm and Conv layers gain most.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs every tensor it leaves alone through the root logger.
    with quiet_torch(), _root_level(logging.ERROR):
        quantize_dynamic(
            ctx.onnx_file(),
            path,
            weight_type=QuantType.QInt8,
        )


@contextlib.contextmanager
def _root_level(level: int) -> Iterator[None]:
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def _torchscript(ctx: BuildContext, path: Path) -> None:
    module = ctx.source.module
    if not ctx.source.scripted:
        names = [spec.name for spec in ctx.inputs]
        with quiet_torch(), torch.no_grad():
            module = torch.jit.trace(module, tuple(as_tensors(ctx.examples, names)))
    with quiet_torch():  # deprecated in favour of torch.export, still what libtorch loads
        torch.jit.save(module, str(path))


def _aoti(ctx: BuildContext, path: Path) -> None:
    if ctx.program is None:
        raise Skipped("AOTInductor needs a torch.export program; a TorchScript model has none")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise Skipped("AOTInductor compiles C++ kernels on the CPU; no C++ compiler found")
    from torch._inductor import aoti_compile_and_package

    with quiet_torch():
        aoti_compile_and_package(ctx.program, package_path=str(path))


def _kernels(ctx: BuildContext, path: Path) -> None:
    # An nn.Sequential of Linear layers and supported activations lowers to a plan of
    # fused linear steps, a recommender's scoring module to those steps and score_topk,
    # another module from its exported graph where that is a chain of such layers;
    # anything else is refused naming the module.
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        raise Skipped("the kernel backend runs Numba kernels on the CPU; numba is not installed")
    from warpserve.compile.kernel_lowering import LoweringError, lower_module
    from warpserve.server.backends.kernel_plan import write_plan

    if len(ctx.inputs) != 1:
        raise Refused(f"the kernels take one input; the model has {len(ctx.inputs)}")
    spec = ctx.inputs[0]
    if spec.dtype != "FP32" or len(spec.dims) != 1:
        raise Refused(f"input {spec.text()}: the kernels take FP32 rows [batch, features]")
    try:
        plan, weights = lower_module(
            ctx.source.module, spec.name, ctx.output_names, _graph_for_kernels(ctx)
        )
    except LoweringError as exc:
        raise Refused(str(exc)) from None
    if plan.input.dims != spec.dims:
        raise Refused(
            f"input {spec.text()}: the model's first Linear layer takes {plan.input.dims[0]} "
            "features"
        )
    write_plan(path.parent, plan, weights)


def _graph_for_kernels(ctx: BuildContext) -> torch.export.ExportedProgram | None:
    """The exported program, for a module that lowers from its graph: exported here when
    the other targets did not need it; None for a TorchScript model or one that lowers by
    its children (an nn.Sequential, a scoring module)."""
    from torch import nn

    from warpserve.compile.errors import UsageError
    from warpserve.compile.kernel_lowering import SCORING_ATTRIBUTES, LoweringError

    module = ctx.source.module
    if ctx.program is not None or ctx.source.scripted or isinstance(module, nn.Sequential):
        return ctx.program
    if all(hasattr(module, a) for a in SCORING_ATTRIBUTES):
        return None
    if ctx.source.program is not None:  # a .pt2: the program as given
        return ctx.source.program
    names = [s.name for s in ctx.inputs]
    try:
        return export_program(ctx.source, ctx.examples, names, ctx.max_batch_size)
    except UsageError as exc:
        raise LoweringError(f"model ({type(module).__name__}): {exc}") from None


def _tensorrt(precision: str) -> Callable[[BuildContext, Path], None]:
    def build(ctx: BuildContext, path: Path) -> None:
        from warpserve.compile import tensorrt

        tensorrt.build_engine(ctx, path, precision)

    return build


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "onnx",
            "onnxruntime_onnx",
            "model.onnx",
            "fp32",
            _onnx,
            "ONNX from the torch exporter, optimised by ONNX Runtime at load",
        ),
        Target(
            "ort",
            "onnxruntime_onnx",
            "model.onnx",
            "fp32",
            _ort,
            "ONNX Runtime with full graph optimisation, saved optimised",
        ),
        Target(
            "ort-int8",
            "onnxruntime_onnx",
            "model.onnx",
            "int8",
            _ort_int8,
            "ONNX Runtime, INT8 dynamic quantization of the weights",
        ),
        Target(
            "tensorrt-fp32",
            "tensorrt_plan",
            "model.plan",
            "fp32",
            _tensorrt("fp32"),
            "TensorRT engine, FP32",
        ),
        Target(
            "tensorrt-fp16",
            "tensorrt_plan",
            "model.plan",
            "fp16",
            _tensorrt("fp16"),
            "TensorRT engine, FP16",
        ),
        Target(
            "tensorrt-int8",
            "tensorrt_plan",
            "model.plan",
            "int8",
            _tensorrt("int8"),
            "TensorRT engine, INT8 calibrated on the example inputs",
        ),
        Target(
            "aoti",
            "torch_aoti",
            "model.pt2",
            "fp32",
            _aoti,
            "AOTInductor package (C++ kernels on the CPU, Triton kernels on a GPU)",
        ),
        Target(
            "torchscript",
            "pytorch_libtorch",
            "model.pt",
            "fp32",
            _torchscript,
            "TorchScript (traced), the simple fallback",
        ),
        Target(
            "kernels",
            "warpserve_kernels",
            "plan.json",
            "fp32",
            _kernels,
            "warpserve's kernels: fused Linear + activation layers, and top-k scoring "
            "(Numba on the CPU)",
            ("weights.npz",),
        ),
    )
}
if tuple(TARGETS) != TARGET_NAMES:
    raise ImportError("compile/names.py and the TARGETS table list different targets")
