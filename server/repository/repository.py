"""A model repository on disk in Triton's layout.

    <root>/<model>/config.pbtxt
    <root>/<model>/<version>/model.onnx     (numeric version folders)

A version folder counts only when complete: its name is a positive integer, it
holds the model file, and no ``.incomplete`` marker lies in it. Writers either
build the folder under another name and rename it into place (atomic), or drop the
marker first and remove it last. Nothing outside ``root`` is ever read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.errors import InvalidInput, ModelNotFound
from warpserve.server.repository import config as cfg

INCOMPLETE_MARKER = ".incomplete"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def check_model_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"model name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            "without path separators or '..'"
        )
    return name


@dataclass(frozen=True)
class VersionFolder:
    version: int
    path: Path


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a directory")

    def model_names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and not p.name.startswith(".")
        )

    def model_dir(self, name: str) -> Path:
        check_model_name(name)
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_dir():
            raise ModelNotFound(
                f"model '{name}' is not in the repository {self.root}; "
                "RepositoryIndex lists what is there"
            )
        return path

    def config(self, name: str) -> mc.ModelConfig:
        """The config as written (or an empty one named after the folder)."""
        return cfg.read_config(self.model_dir(name))

    def version_folders(self, name: str, config: mc.ModelConfig) -> list[VersionFolder]:
        """Complete version folders, oldest first."""
        model_dir = self.model_dir(name)
        found = []
        for path in model_dir.iterdir():
            numbered = path.is_dir() and path.name.isdigit() and int(path.name) > 0
            if numbered and self.is_complete(path, config):
                found.append(VersionFolder(int(path.name), path))
        return sorted(found, key=lambda v: v.version)

    def is_complete(self, version_dir: Path, config: mc.ModelConfig) -> bool:
        if (version_dir / INCOMPLETE_MARKER).exists():
            return False
        filename = cfg.model_filename(config)
        if not filename:  # no format named: any format's default file will do
            return formats.guess(version_dir) is not None
        return (version_dir / filename).exists()

    def incomplete_folders(self, name: str, config: mc.ModelConfig) -> list[Path]:
        """Numeric version folders that are not complete (reported, never loaded)."""
        model_dir = self.model_dir(name)
        return sorted(
            p
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and not self.is_complete(p, config)
        )

    def versions_to_serve(self, name: str, config: mc.ModelConfig) -> list[VersionFolder]:
        folders = self.version_folders(name, config)
        return select_versions(config.version_policy, folders)

    def version_folder(self, name: str, version: int, config: mc.ModelConfig) -> VersionFolder:
        for folder in self.version_folders(name, config):
            if folder.version == version:
                return folder
        raise ModelNotFound(f"model '{name}' has no complete version {version} in the repository")


def select_versions(
    policy: mc.ModelVersionPolicy, folders: list[VersionFolder]
) -> list[VersionFolder]:
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return folders
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return [f for f in folders if f.version in wanted]
    count = policy.latest.num_versions if kind == "latest" else 1
    return folders[-max(count, 1) :] if folders else []
