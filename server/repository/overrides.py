"""RepositoryModelLoad overrides: a config (JSON, as Triton takes it) and model files.

Files are written only inside the model's folder in the repository: a path that
resolves anywhere else is refused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import InvalidInput
from warpserve.server.repository.config import CONFIG_FILE
from warpserve.server.repository.repository import ModelRepository, check_model_name

FILE_PREFIX = "file:"


def apply(repository: ModelRepository, name: str, params: dict[str, Any]) -> None:
    check_model_name(name)
    model_dir = repository.root / name
    files = {k: v for k, v in params.items() if k.startswith(FILE_PREFIX)}
    unknown = [k for k in params if k != "config" and not k.startswith(FILE_PREFIX)]
    if unknown:
        raise InvalidInput(
            f"unknown load parameter(s) {unknown}; use 'config' and 'file:<version>/<name>'"
        )
    _check_inside(repository, model_dir)
    # Everything is checked before the first write, so a refused call writes nothing.
    payloads = {
        _target(model_dir, key[len(FILE_PREFIX) :]): _bytes(v, key) for key, v in files.items()
    }
    config = _config(name, params["config"]) if "config" in params else None
    model_dir.mkdir(exist_ok=True)
    for target, data in payloads.items():
        _write_atomic(target, data)
    if config is not None:
        _write_atomic(model_dir / CONFIG_FILE, text_format.MessageToString(config).encode())


def _check_inside(repository: ModelRepository, model_dir: Path) -> None:
    if model_dir.exists() and model_dir.resolve().parent != repository.root:
        raise InvalidInput(
            f"model folder {model_dir.name!r} links outside the repository; overrides are "
            "written only inside it"
        )


def _target(model_dir: Path, relative: str) -> Path:
    root = (
        model_dir.resolve() if model_dir.exists() else model_dir.parent.resolve() / model_dir.name
    )
    target = (root / relative).resolve()
    if not relative or os.path.isabs(relative) or root not in target.parents:
        raise InvalidInput(
            f"override file path {relative!r} leaves the model folder; use a relative "
            "path such as '1/model.onnx'"
        )
    if target.is_dir():
        raise InvalidInput(
            f"override file path {relative!r} names a folder; name a file such as '1/model.onnx'"
        )
    return target


def _config(name: str, value: Any) -> mc.ModelConfig:
    text = value.string_param if hasattr(value, "string_param") else str(value)
    config = mc.ModelConfig()
    try:
        # Unknown fields are typos here as in config.pbtxt: the message names the field.
        json_format.Parse(text, config)
    except json_format.ParseError as exc:
        raise InvalidInput(f"config override is not a valid ModelConfig JSON: {exc}") from exc
    if config.name and config.name != name:
        raise InvalidInput(f"config override names model '{config.name}', not '{name}'")
    config.name = name
    return config


def _bytes(value: Any, key: str) -> bytes:
    kind = value.WhichOneof("parameter_choice") if hasattr(value, "WhichOneof") else None
    if kind != "bytes_param":
        raise InvalidInput(f"load parameter '{key}' must carry bytes (bytes_param)")
    return bytes(value.bytes_param)


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".override-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
