"""A deliberately slower copy of an ONNX version: the positive control for regressions.

The copy computes the whole graph ``factor`` times and adds the extra copies' outputs
times zero, so its outputs (and golden data) equal the original's while its compute
grows about ``factor``-fold. Two things keep ONNX Runtime's optimizer from undoing it:
each copy reads its inputs through ``Max(x, x)`` (a new name, so common-subexpression
elimination cannot merge it with the original), and the zero multiply is not folded
(``0 * x`` is not ``0`` for NaN or infinity).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MODEL_FILE = "model.onnx"


def slowed_graph(model: onnx.ModelProto, factor: int) -> onnx.ModelProto:
    if factor < 2:
        raise ValueError(f"slowdown factor {factor} must be at least 2")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    originals = list(graph.node)
    for k in range(1, factor):
        suffix = f"__slow{k}"
        renamed = {name: name + suffix for name in inputs}
        for name in inputs:
            graph.node.append(
                helper.make_node("Max", [name, name], [renamed[name]], name=f"max{suffix}_{name}")
            )
        for index, node in enumerate(originals):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{node.name or node.op_type}{suffix}_{index}"
            for i, name in enumerate(copy.input):
                if name in renamed:
                    copy.input[i] = renamed[name]
                elif name and name not in initializers:
                    copy.input[i] = name + suffix  # an intermediate: this copy's own
            for i, name in enumerate(copy.output):
                if name:
                    copy.output[i] = name + suffix
            graph.node.append(copy)
    _add_zero_terms(model, factor)
    return model


def _add_zero_terms(model: onnx.ModelProto, factor: int) -> None:
    """output = output + sum_k(0 * output_k), under the original output names."""
    graph = model.graph
    for out in graph.output:
        final, name = out.name, out.name + "__orig"
        for node in graph.node:
            for i, o in enumerate(node.output):
                if o == final:
                    node.output[i] = name
            for i, o in enumerate(node.input):
                if o == final:
                    node.input[i] = name
        elem = out.type.tensor_type.elem_type
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        zero = numpy_helper.from_array(np.zeros((), dtype=dtype), name=f"zero__{final}")
        graph.initializer.append(zero)
        total = name
        for k in range(1, factor):
            scaled = f"{final}__zero{k}"
            graph.node.append(helper.make_node("Mul", [f"{final}__slow{k}", zero.name], [scaled]))
            summed = f"{final}__sum{k}" if k < factor - 1 else final
            graph.node.append(helper.make_node("Add", [total, scaled], [summed]))
            total = summed


def write_slowed_copy(source: Path, target: Path, factor: int = 2) -> Path:
    """Copy version folder ``source`` (model, golden data) to ``target`` with the
    model made ``factor`` times heavier."""
    if factor < 2:
        raise ValueError(f"slowdown factor {factor} must be at least 2")
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new version folder")
    # Built under a hidden name and renamed into place, so a polling server never
    # loads half a version.
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    model = onnx.load(str(source / MODEL_FILE))
    onnx.save(slowed_graph(model, factor), str(staging / MODEL_FILE))
    staging.rename(target)
    return target
