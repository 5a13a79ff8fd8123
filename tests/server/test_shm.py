"""System shared memory regions: registration rules, key confinement, bounds, lifetime."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from warpserve.server import cli
from warpserve.server.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from warpserve.server.shm import SHM_ROOT, SharedMemoryRegions


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Stands in for /dev/shm: objects are plain files there too."""
    folder = tmp_path / "shm"
    folder.mkdir()
    return folder


def make_object(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.write_bytes(data)
    return path


@pytest.fixture
def regions(root: Path) -> SharedMemoryRegions:
    return SharedMemoryRegions(allowed=True, root=root)


def test_off_unless_allowed(root: Path) -> None:
    make_object(root, "obj", bytes(64))
    off = SharedMemoryRegions(allowed=False, root=root)
    for call in (
        lambda: off.register("r", "/obj", 0, 64),
        lambda: off.status(""),
        lambda: off.unregister(""),
        lambda: off.region("INPUT0", "r"),
    ):
        with pytest.raises(PermissionDenied, match="--allow-client-shm"):
            call()


def test_register_status_unregister(root: Path, regions: SharedMemoryRegions) -> None:
    make_object(root, "obj", bytes(8192))
    regions.register("a", "/obj", 0, 100)
    regions.register("b", "obj", 4096, 4096)  # shm_open accepts names without the slash
    assert [(r.name, r.key, r.offset, r.byte_size) for r in regions.status("")] == [
        ("a", "/obj", 0, 100),
        ("b", "obj", 4096, 4096),
    ]
    assert [r.name for r in regions.status("b")] == ["b"]
    regions.unregister("a")
    regions.unregister("a")  # unknown names are ignored, as in Triton
    with pytest.raises(NotFound, match="'a'"):
        regions.status("a")
    regions.unregister("")
    assert regions.status("") == []


@pytest.mark.parametrize(
    "name, key, offset, size, error, message",
    [
        ("", "/obj", 0, 8, InvalidInput, "needs a name"),
        ("r", "/obj", 0, 0, InvalidInput, "byte_size above 0"),
        ("r", "/obj", 60, 8, InvalidInput, "ends at byte 68 but .* holds 64 bytes"),
        ("r", "/missing", 0, 8, NotFound, "no shared memory object '/missing'"),
        ("r", "../obj", 0, 8, InvalidInput, "not a shared memory object name"),
        ("r", "/a/b", 0, 8, InvalidInput, "not a shared memory object name"),
        ("r", "/", 0, 8, InvalidInput, "not a shared memory object name"),
        ("r", "..", 0, 8, InvalidInput, "not a shared memory object name"),
        ("r", "/ob\0j", 0, 8, InvalidInput, "not a shared memory object name"),
        ("r", "/link", 0, 8, InvalidInput, "cannot open"),
        ("r", "/folder", 0, 8, InvalidInput, "cannot open"),
        ("r", "/fifo", 0, 8, InvalidInput, "is not a shared memory object"),
    ],
)
def test_bad_registrations(
    root: Path,
    regions: SharedMemoryRegions,
    name: str,
    key: str,
    offset: int,
    size: int,
    error: type[Exception],
    message: str,
) -> None:
    make_object(root, "obj", bytes(64))
    secret = make_object(root.parent, "secret", b"x" * 64)
    (root / "link").symlink_to(secret)  # keys never follow links out of the shm folder
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(error, match=message):
        regions.register(name, key, offset, size)
    assert regions.status("") == []


def test_duplicate_name_and_region_cap(root: Path) -> None:
    make_object(root, "obj", bytes(64))
    regions = SharedMemoryRegions(allowed=True, root=root, max_regions=2)
    regions.register("a", "/obj", 0, 8)
    with pytest.raises(AlreadyExists, match="'a' is already registered"):
        regions.register("a", "/obj", 8, 8)
    regions.register("b", "/obj", 8, 8)
    with pytest.raises(ResourceExhausted, match="2 shared memory regions"):
        regions.register("c", "/obj", 16, 8)
    regions.unregister("a")
    regions.register("c", "/obj", 16, 8)


def test_reads_see_the_objects_bytes_at_unaligned_offsets(
    root: Path, regions: SharedMemoryRegions
) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    make_object(root, "obj", data)
    regions.register("r", "/obj", 5000, 4000)  # not a multiple of the page size
    view = regions.region("INPUT0", "r").read("INPUT0", 100, 16)
    assert bytes(view) == data[5100:5116]
    assert view.readonly
    with pytest.raises(InvalidInput, match=r"bytes 3990\.\.4010 lie outside .* 4000 bytes"):
        regions.region("INPUT0", "r").read("INPUT0", 3990, 20)
    with pytest.raises(InvalidInput, match="region 'nope', which is not registered"):
        regions.region("INPUT0", "nope")


def test_outputs_are_written_in_place(root: Path, regions: SharedMemoryRegions) -> None:
    path = make_object(root, "obj", bytes(64))
    regions.register("out", "/obj", 16, 32)
    target = regions.region("OUTPUT0", "out").target("OUTPUT0", 8, 24)
    target.write(np.arange(4, dtype=np.float32).tobytes())
    assert np.frombuffer(path.read_bytes()[24:40], np.float32).tolist() == [0, 1, 2, 3]
    with pytest.raises(InvalidInput, match=r"needs 32 bytes .* holds 24"):
        target.write(bytes(32))
    with pytest.raises(InvalidInput, match="outside shared memory region 'out'"):
        regions.region("OUTPUT0", "out").target("OUTPUT0", 16, 24)


def test_a_shrunk_object_is_an_error_not_a_crash(root: Path, regions: SharedMemoryRegions) -> None:
    path = make_object(root, "obj", bytes(3 * 4096))
    regions.register("r", "/obj", 0, 3 * 4096)
    region = regions.region("INPUT0", "r")
    target = region.target("OUTPUT0", 8192, 16)
    os.truncate(path, 4096)  # reading the mapped pages past here would raise SIGBUS
    with pytest.raises(InvalidInput, match="shrank to 4096 bytes"):
        region.read("INPUT0", 8192, 16)
    with pytest.raises(InvalidInput, match="shrank to 4096 bytes"):
        target.write(bytes(16))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_memory_outlives_unregister_and_descriptors_are_released(
    root: Path, regions: SharedMemoryRegions
) -> None:
    make_object(root, "obj", b"abcdefgh" * 8)
    gc.collect()
    before = _open_descriptors()
    for i in range(20):
        regions.register(f"r{i}", "/obj", 0, 64)
    view = regions.region("INPUT0", "r0").read("INPUT0", 0, 8)
    regions.unregister("")
    gc.collect()
    assert bytes(view) == b"abcdefgh"  # a request in flight keeps its memory
    del view
    gc.collect()
    assert _open_descriptors() == before
    for _ in range(3):  # failed registrations close what they opened too
        with pytest.raises(InvalidInput):
            regions.register("big", "/obj", 0, 65)
    gc.collect()
    assert _open_descriptors() == before


@pytest.fixture
def posix_object() -> Iterator[shared_memory.SharedMemory]:
    if not SHM_ROOT.is_dir():
        pytest.skip(f"{SHM_ROOT} does not exist on this system")
    block = shared_memory.SharedMemory(create=True, size=4096)
    yield block
    block.close()
    block.unlink()


def test_a_real_posix_shared_memory_object(posix_object: shared_memory.SharedMemory) -> None:
    regions = SharedMemoryRegions(allowed=True)
    regions.register("r", "/" + posix_object.name, 0, 4096)
    buf = posix_object.buf
    assert buf is not None
    buf[:4] = b"warp"
    assert bytes(regions.region("INPUT0", "r").read("INPUT0", 0, 4)) == b"warp"
    regions.region("OUTPUT0", "r").target("OUTPUT0", 8, 8).write(b"served!!")
    assert bytes(buf[8:16]) == b"served!!"
    del buf
    regions.unregister("")


@pytest.mark.parametrize(
    "argv, allowed",
    [
        ([], False),
        (["--allow-client-shm"], True),
        (["--allow-client-shm=true"], True),  # Triton's spelling
        (["--allow-client-shm", "false"], False),
    ],
)
def test_the_serve_flag(argv: list[str], allowed: bool) -> None:
    args = cli.build_parser().parse_args(["serve", *argv])
    assert cli._options(args).allow_client_shm is allowed
