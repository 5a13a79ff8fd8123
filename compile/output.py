"""Write the chosen variant(s) into a Triton-layout model repository.

Version folders are written by the server's version-folder module (staged under a hidden
name and renamed into place, so a server polling the repository never reads half of one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from warpserve.compile.errors import UsageError
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.repository import versionfolder

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class VersionFiles:
    model_file: Path  # copied under its own name
    golden_inputs: dict[str, np.ndarray]
    golden_outputs: dict[str, np.ndarray]
    texts: dict[str, str]  # extra files by name: reports, training summaries
    companions: tuple[Path, ...] = ()  # further model files (a kernel plan's weights)


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def plan_versions(model_dir: Path, requested: int | None, count: int) -> list[int]:
    """``count`` consecutive version numbers: from ``requested``, or after the highest."""
    taken = set(existing_versions(model_dir))
    first = requested if requested is not None else max(taken, default=0) + 1
    numbers = list(range(first, first + count))
    clash = sorted(taken.intersection(numbers))
    if clash:
        raise UsageError(
            f"{model_dir}: version {clash[0]} exists already; omit --version to use the next "
            f"free number ({max(taken) + 1})"
        )
    return numbers


def write_version(model_dir: Path, version: int, files: VersionFiles) -> Path:
    golden = versionfolder.Golden(files.golden_inputs, files.golden_outputs)
    return versionfolder.write_version(
        model_dir,
        version,
        files.model_file,
        files.model_file.name,
        golden=golden,
        reports=files.texts,
        companions={path.name: path for path in files.companions},
    )


def write_config(model_dir: Path, config: mc.ModelConfig) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    staging = model_dir / f".{CONFIG_FILE}.{os.getpid()}"
    staging.write_text(text_format.MessageToString(config), encoding="utf-8")
    os.replace(staging, path)
    return path
