"""Target names, importable without torch (the CLI's flags are parsed before torch loads)."""

from __future__ import annotations

TARGET_NAMES = (
    "onnx",
    "ort",
    "ort-int8",
    "tensorrt-fp32",
    "tensorrt-fp16",
    "tensorrt-int8",
    "aoti",
    "torchscript",
    "kernels",
)
# `auto` tries everything: what cannot be built here is listed as skipped, with the reason.
AUTO = TARGET_NAMES
