"""Where a model runs when the server has several frontend processes.

A model is *owner-placed* when it must be loaded once for the whole server: its
instances sit on a GPU (a GPU model loaded by every frontend would hold its weights
once per process, and each copy would batch only that process's traffic). The owner
process loads these; every frontend sends their requests to it. Other models are
loaded by each frontend, which serves them itself.

The ``warpserve.placement`` config parameter overrides the choice: ``owner`` places a
CPU model on the owner (and is how the owner path runs on a machine without a GPU),
``local`` keeps a GPU model in every frontend. In a single-process server placement
changes nothing: every model is local.
"""

from __future__ import annotations

from pathlib import Path

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as formats
from warpserve.server.errors import ModelNotFound, WarpserveError
from warpserve.server.repository import config as cfg
from warpserve.server.repository import parameters as params
from warpserve.server.repository.repository import ModelRepository

OWNER, LOCAL = "owner", "local"

PLACEMENT = params.choice(
    "warpserve.placement",
    "auto",
    ("auto", OWNER, LOCAL),
    "owner: loaded once, in the model owner, for every frontend process; local: in each "
    "frontend process; auto: owner when its instances run on a GPU",
)


def placement(config: mc.ModelConfig) -> str:
    """OWNER or LOCAL for a config as written in the repository."""
    chosen = PLACEMENT.read(config)
    if chosen != "auto":
        return chosen
    return OWNER if _on_gpu(config) else LOCAL


def _on_gpu(config: mc.ModelConfig) -> bool:
    """Whether the model's instances will run on a GPU here, as config completion
    decides it (KIND_AUTO and no instance_group mean the GPU where the format has one)."""
    spec = formats.find(config) if config.platform or config.backend else None
    gpu_here = spec is not None and spec.capabilities.gpu and spec.gpu_available()
    if not gpu_here:
        return False
    kinds = {g.kind for g in config.instance_group} or {mc.ModelInstanceGroup.KIND_AUTO}
    wanted = (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO)
    return any(kind in wanted for kind in kinds)


class PlacedRepository(ModelRepository):
    """The repository as one side sees it: the owner sees only its models, a frontend
    only the others. Everything that lists models (startup loads, poll mode,
    RepositoryIndex) then acts on its own side's models alone."""

    def __init__(self, repository: ModelRepository, side: str) -> None:
        super().__init__(repository.root)
        self.side = side

    def model_names(self) -> list[str]:
        return [name for name in super().model_names() if self.placement_of(name) == self.side]

    def model_dir(self, name: str) -> Path:
        """The model's folder, when this side serves it: a frontend never loads an
        owner-placed model (nor the owner a local one), whoever asks it to."""
        path = super().model_dir(name)
        if self._placement(path) != self.side:
            where = "the model owner" if self.side == LOCAL else "each frontend process"
            raise ModelNotFound(
                f"model '{name}' is served by {where}, not by this process (its "
                f"{PLACEMENT.key} parameter or instance_group places it there)"
            )
        return path

    def placement_of(self, name: str) -> str:
        return self._placement(super().model_dir(name))

    @staticmethod
    def _placement(model_dir: Path) -> str:
        """A config that cannot be read stays LOCAL: each frontend reports its error."""
        try:
            return placement(cfg.read_config(model_dir))
        except WarpserveError:
            return LOCAL


def owner_placed(repository: ModelRepository) -> set[str]:
    """The repository's models that the owner serves."""
    return set(PlacedRepository(repository, OWNER).model_names())
