"""ONNX Runtime backend: CPU here, CUDA when a GPU and onnxruntime-gpu are present."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.cpus import usable_cores
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.repository import config as cfg

log = logging.getLogger(__name__)


def _param(config: mc.ModelConfig, key: str, default: int) -> int:
    if key in config.parameters:
        return int(config.parameters[key].string_value)
    return default


def _providers(config: mc.ModelConfig) -> list[str]:
    wants_cpu = all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group)
    if not wants_cpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(config: mc.ModelConfig, instances: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    cores = usable_cores()
    # Instances run concurrently, so they share the cores rather than each taking all.
    options.intra_op_num_threads = _param(
        config, "intra_op_thread_count", max(1, cores // max(instances, 1))
    )
    options.inter_op_num_threads = _param(config, "inter_op_thread_count", 1)
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
        if "intra_op_thread_count" in self._config.parameters:
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
    path = version_dir / cfg.model_filename(config)
    session = _open(path, session_options(config, count), _providers(config))
    log.info("loaded %s instance %d/%d on %s", path, index + 1, count, session.get_providers()[0])
    return OnnxRuntimeInstance(session, config, path, count)


def _open(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime could not load {path}: {exc}") from exc
