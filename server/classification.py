"""Triton's classification extension: an output answered as its top-k classes.

A requested output with the ``classification`` parameter (tritonclient's
``InferRequestedOutput(name, class_count=k)``) comes back as BYTES of shape
``[batch, min(k, classes)]`` (``[min(k, elements)]`` for a model without batching), each
element ``"value:index"`` or ``"value:index:label"``, best first. Labels come from the
output's ``label_filename`` in config.pbtxt: one label per line, line i naming class i.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.validation import TensorSpec

PARAMETER = "classification"
# Outputs whose values order classes. Triton also refuses BOOL and BYTES; it refuses FP16
# and BF16 too, which order as well as FP32 does, so they are served here.
_CLASSIFIABLE = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64", "BF16"}
)

Labels = dict[str, list[str]]  # output name -> label of each class index


def requested_count(output: str, params: Mapping[str, pb.InferParameter]) -> int:
    """The class count a requested output's parameters ask for; 0 when they do not."""
    if PARAMETER not in params:
        return 0
    param = params[PARAMETER]
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidInput(
            f"invalid value type for '{PARAMETER}' parameter, expected int64_param: output "
            f"'{output}' must give the number of classes to return as an int64"
        )
    count = param.int64_param
    if count <= 0:
        raise InvalidInput(
            f"invalid value for '{PARAMETER}' parameter of output '{output}': expected a "
            f"class count >= 1, got {count}"
        )
    return count


def check_classifiable(classes: Iterable[str], outputs: Mapping[str, TensorSpec]) -> None:
    """Refuse, before the model runs, a classification of an output that holds no scores."""
    for name in classes:
        spec = outputs.get(name)
        if spec is not None and spec.dtype.wire not in _CLASSIFIABLE:
            raise InvalidInput(
                f"class result not available for output due to unsupported type "
                f"'{spec.dtype.wire}': output '{name}' holds no class scores; request it "
                "without a class count"
            )


def classified(
    outputs: dict[str, np.ndarray],
    classes: dict[str, int],
    batched: bool,
    labels: Labels,
) -> dict[str, np.ndarray]:
    """The outputs with those requested as classes (``classes``: output name -> count)
    replaced by their top classes, labelled from ``labels`` (output name -> labels)."""
    return {
        name: classify(array, count, batched, labels.get(name))
        if (count := classes.get(name))
        else array
        for name, array in outputs.items()
    }


def classify(
    array: np.ndarray, count: int, batched: bool, labels: list[str] | None = None
) -> np.ndarray:
    """The ``count`` highest values of each batch row (of the whole tensor without
    batching), as Triton's ``"value:index[:label]"`` strings in BYTES elements."""
    if array.dtype.kind not in "iuf" and array.dtype.name != "bfloat16":
        raise InvalidInput(
            f"class result not available for output due to unsupported type '{array.dtype}'"
        )
    rows = array.shape[0] if batched and array.ndim else 1
    scores = array.reshape(rows, -1)
    keep = min(count, scores.shape[1])
    # Stable on the negated scores: ties list the lower class index first. float64 holds
    # every score type exactly except int64 beyond 2**53, where the order stays right.
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :keep]
    is_int = scores.dtype.kind in "iu"
    out = np.empty((rows, keep), dtype=np.object_)
    for row in range(rows):
        for rank, index in enumerate(order[row].tolist()):
            value = scores[row, index]
            # Triton writes values with std::to_string: integers as such, floats as "%f".
            text = f"{int(value)}:{index}" if is_int else f"{float(value):f}:{index}"
            label = labels[index] if labels is not None and index < len(labels) else ""
            out[row, rank] = (f"{text}:{label}" if label else text).encode()
    return out if batched else out.reshape(keep)


def read_labels(model_dir: Path, config: mc.ModelConfig) -> Labels:
    """Each output's labels from its ``label_filename``, a path inside the model folder."""
    labels: Labels = {}
    root = model_dir.resolve()
    for output in config.output:
        if not output.label_filename:
            continue
        path = (model_dir / output.label_filename).resolve()
        if not path.is_relative_to(root):
            raise ModelLoadError(
                f"label file '{output.label_filename}' for output '{output.name}' is outside "
                f"the model folder {model_dir}; keep it in the folder beside config.pbtxt"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"label file '{output.label_filename}' for output '{output.name}' cannot be "
                f"read ({exc}); put one UTF-8 label per line in {model_dir}"
            ) from exc
        lines = text.split("\n")
        if lines and not lines[-1]:
            lines.pop()  # the newline that ends the last line starts no label
        labels[output.name] = [line.removesuffix("\r") for line in lines]
    return labels
