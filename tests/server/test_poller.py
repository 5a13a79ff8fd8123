"""Poll mode, driven step by step with ``poll_once``: a version folder written slowly is
never loaded half-written; the ``.incomplete`` marker holds a folder back; new models
load, removed ones unload, a broken change leaves the old version serving."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.models import affine_model, write_affine, write_golden
from warpserve.server.lifecycle.poller import RepositoryPoller
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.served import ServedModel
from warpserve.server.repository.repository import INCOMPLETE_MARKER, ModelRepository

MODEL = "affine"


class Recorder:
    """Counts the loads the poller asks the registry for."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.loads: list[str] = []
        inner = registry.load

        async def load(name: str, *args: Any, **kwargs: Any) -> ServedModel:
            self.loads.append(name)
            return await inner(name, *args, **kwargs)

        setattr(registry, "load", load)  # noqa: B010 (mypy refuses a method assignment)


def in_pieces(path: Path, data: bytes, pieces: int) -> list[Callable[[], None]]:
    """Steps that each append one piece of ``data`` to ``path``."""
    size = -(-len(data) // pieces)

    def step(i: int) -> Callable[[], None]:
        def write() -> None:
            with path.open("ab") as f:
                f.write(data[i * size : (i + 1) * size])

        return write

    return [step(i) for i in range(pieces)]


def run_polled(
    tmp_path: Path, body: Callable[[ModelRegistry, RepositoryPoller], Awaitable[None]]
) -> None:
    async def main() -> None:
        write_affine(tmp_path, MODEL, (1,))
        registry = ModelRegistry(ModelRepository(tmp_path))
        await registry.load(MODEL)
        poller = RepositoryPoller(registry, interval_s=3600.0)  # only poll_once polls
        poller.start()
        try:
            await body(registry, poller)
        finally:
            await poller.stop()
            await registry.close()

    asyncio.run(main())


def active(registry: ModelRegistry) -> int | None:
    return registry.models[MODEL].router.active


def test_a_version_written_in_pieces_loads_only_once_complete_and_settled(
    tmp_path: Path,
) -> None:
    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        recorder = Recorder(registry)
        vdir = tmp_path / MODEL / "2"
        vdir.mkdir()
        await poller.poll_once()
        for write in in_pieces(vdir / "model.onnx", affine_model(scale=2.0), pieces=4):
            write()
            await poller.poll_once()  # a change since the last poll: wait for it to settle
            assert recorder.loads == []
            assert 2 not in registry.models[MODEL].versions
        write_golden(vdir, 2)
        await poller.poll_once()
        assert recorder.loads == []
        await poller.poll_once()  # the same as last time: settled
        assert recorder.loads == [MODEL]
        assert active(registry) == 2
        await poller.poll_once()  # nothing changed: nothing to do
        assert recorder.loads == [MODEL]

    run_polled(tmp_path, body)


def test_the_incomplete_marker_holds_a_folder_back_however_long_it_is_stable(
    tmp_path: Path,
) -> None:
    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        vdir = tmp_path / MODEL / "2"
        vdir.mkdir()
        (vdir / INCOMPLETE_MARKER).touch()
        steps = in_pieces(vdir / "model.onnx", affine_model(scale=2.0), pieces=3)
        for write in steps[:2]:
            write()
            for _ in range(3):  # stable over several polls, yet half-written
                await poller.poll_once()
                assert 2 not in registry.models[MODEL].versions
                assert active(registry) == 1
        steps[2]()
        write_golden(vdir, 2)
        for _ in range(3):
            await poller.poll_once()
            assert 2 not in registry.models[MODEL].versions
        (vdir / INCOMPLETE_MARKER).unlink()
        await poller.poll_once()
        assert active(registry) == 1
        await poller.poll_once()
        assert active(registry) == 2

    run_polled(tmp_path, body)


def test_a_folder_renamed_into_place_loads_after_one_settling_poll(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        staging = tmp_path / "staging"
        write_affine(staging, MODEL, (2,), config=False)
        (staging / MODEL / "2").rename(tmp_path / MODEL / "2")
        await poller.poll_once()
        await poller.poll_once()
        assert active(registry) == 2

    run_polled(tmp_path, body)


def test_a_broken_new_version_leaves_the_old_one_serving(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        vdir = write_affine(tmp_path, MODEL, (2,), config=False) / "2"
        write_golden(vdir, 2, corrupt=True)
        await poller.poll_once()
        await poller.poll_once()  # logs the failure, does not raise
        served = registry.models[MODEL]
        assert active(registry) == 1
        assert "golden check" in served.versions[2].reason
        write_golden(vdir, 2)
        await poller.poll_once()
        await poller.poll_once()
        assert active(registry) == 2

    run_polled(tmp_path, body)


def test_new_models_load_and_removed_models_unload(tmp_path: Path) -> None:
    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        write_affine(tmp_path, "other", (1,))
        await poller.poll_once()
        assert "other" not in registry.models
        await poller.poll_once()
        assert registry.is_ready("other")
        shutil.rmtree(tmp_path / "other")
        await poller.poll_once()
        assert "other" not in registry.models
        assert registry.is_ready(MODEL)

    run_polled(tmp_path, body)


@pytest.mark.parametrize("pieces", [2, 5])
def test_fingerprint_changes_with_every_piece(tmp_path: Path, pieces: int) -> None:
    from warpserve.server.lifecycle.poller import fingerprint

    model_dir = tmp_path / MODEL
    (model_dir / "1").mkdir(parents=True)
    seen = {fingerprint(model_dir)}
    for write in in_pieces(model_dir / "1" / "model.onnx", affine_model(), pieces):
        write()
        seen.add(fingerprint(model_dir))
    assert len(seen) == pieces + 1


def test_a_folder_that_vanishes_while_read_is_read_again_and_polling_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder renamed into place while the poller walks the model's folder
    makes the walk fail; the poller looks again at its next poll. And whatever a poll
    raises, polling goes on: a poller task that died loaded nothing ever again."""

    async def body(registry: ModelRegistry, poller: RepositoryPoller) -> None:
        staging = tmp_path / "staging"
        write_affine(staging, MODEL, (2,), config=False)
        (staging / MODEL / "2").rename(tmp_path / MODEL / "2")
        walk = Path.rglob

        def vanishing(self: Path, pattern: str) -> Any:
            raise FileNotFoundError(self / ".2.tmp")

        monkeypatch.setattr(Path, "rglob", vanishing)
        await poller.poll_once()  # does not raise
        monkeypatch.setattr(Path, "rglob", walk)
        await poller.poll_once()
        await poller.poll_once()
        assert active(registry) == 2

        polls = 0
        fail_once = poller.poll_once

        async def flaky() -> None:
            nonlocal polls
            polls += 1
            if polls == 1:
                raise RuntimeError("the first poll fails")
            await fail_once()

        poller.poll_once = flaky  # type: ignore[method-assign]
        poller.interval_s = 0.01
        await poller.stop()
        poller.start()
        for _ in range(500):
            if polls >= 3:
                break
            await asyncio.sleep(0.01)
        assert polls >= 3, "polling stopped after a failed poll"

    run_polled(tmp_path, body)
