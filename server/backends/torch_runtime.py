"""What the TorchScript and AOTInductor backends share: device, threads, tensor names,
a CUDA stream per instance and optional CUDA graphs per batch size.

torch is imported inside functions: the format modules must import without it, so that a
server without torch still lists these formats and fails their models with a reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.cpus import thread_budget
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.repository.parameters import flag, integer_list, optional_integer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install 'warpserve[torch]'` (or a CUDA build of torch)"

# Triton's PyTorch backend parameter names, so its repositories keep their settings.
INTRA_OP_THREADS = optional_integer(
    "INTRA_OP_THREAD_COUNT", "torch threads; default: the cores split between instances"
)
INTER_OP_THREADS = optional_integer("INTER_OP_THREAD_COUNT", "torch inter-op threads")
INFERENCE_MODE = flag("INFERENCE_MODE", True, "run under torch.inference_mode")
CUDA_GRAPH_BATCH_SIZES = integer_list(
    "cuda_graph_batch_sizes",
    "on a GPU, capture one CUDA graph per listed batch size and replay it for that size",
)
PARAMETERS = (INTRA_OP_THREADS, INTER_OP_THREADS, INFERENCE_MODE, CUDA_GRAPH_BATCH_SIZES)

_INDEXED = re.compile(r"^(.*)__(\d+)$")


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def positions(names: Sequence[str], argument_names: Sequence[str] = ()) -> list[int]:
    """Where each configured tensor goes in the model's positional arguments or results.

    Triton's conventions for TorchScript: names of the form ``<name>__<index>`` give the
    position; otherwise names equal to the forward method's argument names give theirs;
    otherwise the config's order is the model's.
    """
    indexed = [_INDEXED.match(name) for name in names]
    if names and all(indexed):
        found = [int(m.group(2)) for m in indexed if m is not None]
        if sorted(found) == list(range(len(names))):
            return found
    if argument_names and sorted(names) == sorted(argument_names):
        return [list(argument_names).index(name) for name in names]
    return list(range(len(names)))


def configure_threads(config: mc.ModelConfig, instances: int) -> None:
    """Size torch's thread pools. They are process-wide in torch, so the last model
    loaded decides for all torch models in this server (Triton's backend: the first)."""
    import torch

    threads = INTRA_OP_THREADS.read(config) or max(1, thread_budget() // max(instances, 1))
    if torch.get_num_threads() != threads:
        log.info("model '%s': torch intra-op threads %d", config.name, threads)
        torch.set_num_threads(threads)
    inter = INTER_OP_THREADS.read(config)
    if inter is not None and torch.get_num_interop_threads() != inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError:  # torch allows this only before its first parallel work
            log.warning("model '%s': INTER_OP_THREAD_COUNT applies only at start", config.name)


def device_for(config: mc.ModelConfig, index: int) -> str:
    """The device of instance ``index`` (instances numbered across the groups)."""
    seen = 0
    for group in config.instance_group:
        if index < seen + group.count:
            if group.kind != mc.ModelInstanceGroup.KIND_GPU:
                return "cpu"
            return f"cuda:{_gpu_of(config, group, index - seen)}"
        seen += group.count
    return "cpu"


def _gpu_of(config: mc.ModelConfig, group: mc.ModelInstanceGroup, index: int) -> int:
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"model '{config.name}': instance group '{group.name}' asks for KIND_GPU, but "
            "torch sees no CUDA device; use KIND_CPU or a CUDA build of torch"
        )
    gpus = list(group.gpus) or list(range(torch.cuda.device_count()))
    return gpus[index % len(gpus)]


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: Any  # the model's results on the graph's own buffers


class TorchInstance:
    """One loaded copy of a torch model; ``execute`` runs on the batcher's worker thread.

    ``call`` takes the positional input tensors and returns the model's results
    (a tensor, a tuple/list of tensors or a dict by output name).
    """

    def __init__(
        self,
        call: Callable[..., Any],
        config: mc.ModelConfig,
        device: str,
        input_positions: list[int],
        output_positions: list[int],
    ) -> None:
        import torch

        self._call = call
        self._device = torch.device(device)
        self._inputs = [t.name for t in config.input]
        self._input_order = sorted(range(len(self._inputs)), key=input_positions.__getitem__)
        self._outputs = [t.name for t in config.output]
        self._output_positions = output_positions
        self._inference_mode = INFERENCE_MODE.read(config)
        self._batched = config.max_batch_size > 0
        cuda = self._device.type == "cuda"
        # One stream per instance: instances on one GPU then overlap their copies and
        # kernels instead of queueing on the default stream.
        self._stream = torch.cuda.Stream(self._device) if cuda else None
        self._graph_sizes = set(CUDA_GRAPH_BATCH_SIZES.read(config)) if cuda else set()
        self._graphs: dict[int, _Graph] = {}

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        arrays = [_array(self._inputs[i], inputs) for i in self._input_order]
        rows = arrays[0].shape[0] if self._batched and arrays else 0
        grad = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with grad:
            if self._stream is None:
                results = self._call(*[torch.from_numpy(a) for a in arrays])
                return self._by_name(results)
            with torch.cuda.stream(self._stream):
                if rows in self._graph_sizes:
                    results = self._replay(rows, arrays)
                else:
                    results = self._call(*[self._to_device(a) for a in arrays])
                outputs = self._by_name(results)
            return outputs

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(array).to(self._device, non_blocking=False)

    def _replay(self, rows: int, arrays: list[np.ndarray]) -> Any:
        """Replay the graph captured for this batch size (capturing it on first use).

        A graph replays fixed kernels on fixed buffers: inputs are copied into the
        buffers it was captured with, and its outputs are read back before the next
        replay overwrites them (``_by_name`` copies to host memory).
        """
        import torch

        graph = self._graphs.get(rows)
        if graph is None:
            graph = self._capture(arrays)
            self._graphs[rows] = graph
        for static, array in zip(graph.inputs, arrays, strict=True):
            static.copy_(torch.from_numpy(array), non_blocking=False)
        graph.graph.replay()
        return graph.outputs

    def _capture(self, arrays: list[np.ndarray]) -> _Graph:
        import torch

        static = [self._to_device(a) for a in arrays]
        assert self._stream is not None
        # Warm-up on a side stream first, as torch's CUDA graph notes require: lazy
        # initialisation inside a capture would be recorded into the graph.
        self._call(*static)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            results = self._call(*static)
        return _Graph(graph, static, results)

    def _by_name(self, results: Any) -> dict[str, np.ndarray]:
        if isinstance(results, dict):
            missing = [name for name in self._outputs if name not in results]
            if missing:
                raise InvalidInput(f"the model returned no output(s) {missing}")
            return {name: _host(results[name]) for name in self._outputs}
        flat = _flat(results, self._outputs)
        if len(flat) <= max(self._output_positions, default=-1):
            raise ModelLoadError(
                f"the model returned {len(flat)} tensor(s), the config lists "
                f"{len(self._outputs)} outputs"
            )
        return {
            name: _host(flat[position])
            for name, position in zip(self._outputs, self._output_positions, strict=True)
        }

    def close(self) -> None:
        self._graphs.clear()
        del self._call


def _array(name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    array = inputs[name]
    if array.dtype == np.object_:
        raise InvalidInput(f"input '{name}': torch models take numeric tensors, not BYTES")
    # torch.from_numpy needs a writeable array; a request's view of gRPC bytes is not.
    return array if array.flags.writeable else array.copy()


def _flat(results: Any, names: list[str]) -> list[torch.Tensor]:
    if isinstance(results, (tuple, list)):
        return list(results)
    if isinstance(results, dict):
        return [results[name] for name in names]
    return [results]


def _host(tensor: torch.Tensor) -> np.ndarray:
    # The copy also synchronises the stream the tensor was made on.
    return tensor.detach().cpu().numpy()
