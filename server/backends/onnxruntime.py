"""ONNX Runtime backend: CPU here, CUDA when a GPU and onnxruntime-gpu are present."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # neither the cpu nor the gpu extra: ONNX models fail naming it
    ort = None

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends.spec import (
    BackendSpec,
    Capabilities,
    Signature,
    TensorSignature,
)
from warpserve.server.cpus import thread_budget
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.repository.parameters import integer, optional_integer

log = logging.getLogger(__name__)

INTRA_OP_THREADS = optional_integer(
    "intra_op_thread_count",
    "threads per instance; default: the usable cores split between instances",
)
INTER_OP_THREADS = integer("inter_op_thread_count", 1, "threads running independent nodes", 1)


def _providers(config: mc.ModelConfig) -> list[str]:
    wants_cpu = all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group)
    if not wants_cpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(config: mc.ModelConfig, instances: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    cores = thread_budget()  # this process's share when several serve
    # Instances run concurrently, so they share the cores rather than each taking all.
    threads = INTRA_OP_THREADS.read(config)
    options.intra_op_num_threads = threads or max(1, cores // max(instances, 1))
    options.inter_op_num_threads = INTER_OP_THREADS.read(config)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the cores the gRPC loop needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeInstance:
    def __init__(
        self, session: ort.InferenceSession, config: mc.ModelConfig, path: Path, count: int
    ) -> None:
        self.session = session
        self._config = config
        self._path = path
        self._count = count
        self._outputs = [o.name for o in session.get_outputs()]
        self._inputs = {i.name for i in session.get_inputs()}
        self._text_inputs = {i.name for i in session.get_inputs() if i.type == "tensor(string)"}
        # The binding's own run: InferenceSession.run re-validates names and looks up
        # fallbacks on every call, which costs a tiny model a fifth of its run time.
        self._run = getattr(session, "_sess", session).run

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._text_inputs or len(inputs) != len(self._inputs):
            feed = {k: _as_text(k, v) for k, v in inputs.items() if k in self._inputs}
        else:
            feed = inputs
        try:
            results = self._run(self._outputs, feed, None)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise InvalidInput(f"ONNX Runtime rejected the inputs: {exc}") from exc
        return dict(zip(self._outputs, results, strict=True))

    def single_threaded(self) -> OnnxRuntimeInstance | None:
        """This model in a session without an intra-op pool, for inline execution.

        Between requests the pool's threads sleep (spinning is off so that they leave the
        cores to the gRPC loop), and waking them for every batch-1 run of a tiny model
        costs more than splitting its few microseconds of work saves. None when the
        config chose the thread count itself or the session runs on a GPU.
        """
        if INTRA_OP_THREADS.is_set(self._config):
            return None
        if self.session.get_providers()[0] != "CPUExecutionProvider":
            return None
        options = session_options(self._config, self._count)
        options.intra_op_num_threads = 1
        session = _open(self._path, options, ["CPUExecutionProvider"])
        return OnnxRuntimeInstance(session, self._config, self._path, self._count)

    def close(self) -> None:
        del self.session


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements as str: ONNX Runtime's binding feeds a bytes object as its repr
    ("b'ab'") and cuts fixed-width 'S' arrays at NUL; it round-trips only UTF-8 text."""
    if array.dtype != np.object_:
        return array
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{name}': BYTES element {i} is not UTF-8; ONNX Runtime string "
                    "tensors carry UTF-8 text only, so encode the value (e.g. base64) first"
                ) from exc
        flat[i] = item
    return out


def load_instance(
    config: mc.ModelConfig, version_dir: Path, index: int, count: int
) -> OnnxRuntimeInstance:
    path = SPEC.model_path(config, version_dir)
    session = _open(path, session_options(config, count), _providers(config))
    log.info("loaded %s instance %d/%d on %s", path, index + 1, count, session.get_providers()[0])
    return OnnxRuntimeInstance(session, config, path, count)


def _open(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime could not load {path}: {exc}") from exc


def gpu_available() -> bool:
    return ort is not None and "CUDAExecutionProvider" in ort.get_available_providers()


def read_signature(model_path: Path) -> Signature:
    """Inputs and outputs of the ONNX graph (initializers that double as inputs are not
    inputs a client sends)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return Signature(_tensors(inputs), _tensors(list(graph.output)))


def _tensors(values: list[Any]) -> tuple[TensorSignature, ...]:
    from onnx import helper

    tensors = []
    for value in values:
        tt = value.type.tensor_type
        onnx_name = helper.tensor_dtype_to_string(tt.elem_type)  # e.g. TensorProto.FLOAT
        wire = _ONNX_ELEM_TO_WIRE.get(onnx_name.rsplit(".", 1)[-1], "")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        tensors.append(TensorSignature(value.name, wire, dims))
    return tuple(tensors)


_ONNX_ELEM_TO_WIRE = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FLOAT16": "FP16",
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "STRING": "BYTES",
    "BFLOAT16": "BF16",
}

SPEC = BackendSpec(
    platform="onnxruntime_onnx",
    backend="onnxruntime",
    default_filename="model.onnx",
    loader=load_instance,
    description="ONNX Runtime: CPU, or CUDA with onnxruntime-gpu",
    requires=("onnxruntime", "onnx"),
    # Two builds install the same module; one of them, never both (README: GPU install).
    install_hint="pip install 'warpserve[cpu]', or 'warpserve[gpu]' for CUDA",
    capabilities=Capabilities(inline=True, gpu=True, cpu_pair=True),
    parameters=(INTRA_OP_THREADS, INTER_OP_THREADS),
    gpu_available=gpu_available,
    read_signature=read_signature,
)
