"""Client shared memory: Triton's system shared-memory extension.

A client on the same host creates a POSIX shared memory object, registers a byte range
of it as a named region, and then names that region in a tensor's
``shared_memory_region`` / ``shared_memory_offset`` / ``shared_memory_byte_size``
parameters instead of sending the tensor's bytes. Inputs become numpy views of the
mapping; outputs are written into it and the reply carries only their shape and type.

A region lets any client that reaches the gRPC port read and write a shared memory
object the server's user can open, so the feature is off unless the server is started
with ``--allow-client-shm`` (Triton's flag, also off by default there). Keys name
objects directly under /dev/shm: one path component, no links, regular files only.
"""

from __future__ import annotations

import mmap
import os
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path

from warpserve.server.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

SHM_ROOT = Path("/dev/shm")
# Each region holds a file descriptor and a mapping; the cap keeps clients from using up
# the descriptors the server needs for connections.
MAX_REGIONS = 1024

DISABLED_MESSAGE = (
    "client shared memory is off on this server; start it with --allow-client-shm to "
    "register regions, or send tensors in the request"
)


class Region:
    """One registered region: ``byte_size`` bytes from ``offset`` in the object ``key``."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, root: Path) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        path = root / _checked_key(key)
        try:
            # O_NONBLOCK: a FIFO planted under the key cannot hold the event loop in open().
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(
                f"no shared memory object '{key}' exists; create it (shm_open) before "
                f"registering region '{name}'"
            ) from None
        except OSError as exc:
            raise InvalidInput(
                f"cannot open shared memory object '{key}' for region '{name}': {exc.strerror}"
            ) from None
        # The descriptor stays open while anything uses the region (see ``_check_size``).
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"shared memory key '{key}' is not a shared memory object")
        end = offset + byte_size
        if end > info.st_size:
            raise InvalidInput(
                f"region '{name}' ends at byte {end} but shared memory object '{key}' "
                f"holds {info.st_size} bytes; register a range inside the object"
            )
        # mmap offsets must be multiples of the allocation granularity.
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(
                fd, end - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start
            )
        except OSError as exc:
            raise InvalidInput(
                f"cannot map shared memory object '{key}' for region '{name}': {exc.strerror}"
            ) from None
        # Views handed out keep the mapping alive after the region is unregistered, so a
        # request in flight never sees its memory unmapped.
        self._memory = memoryview(mapping)[offset - start : end - start]

    def _slice(self, tensor: str, offset: int, byte_size: int) -> memoryview:
        if offset + byte_size > self.byte_size:
            raise InvalidInput(
                f"tensor '{tensor}': bytes {offset}..{offset + byte_size} lie outside shared "
                f"memory region '{self.name}', which holds {self.byte_size} bytes"
            )
        self._check_size()
        return self._memory[offset : offset + byte_size]

    def _check_size(self) -> None:
        # Touching a mapped page past the end of a truncated object kills the process
        # with SIGBUS; a client that shrank its object gets an error instead. (A client
        # that truncates while the model reads is not defended against, as in Triton.)
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.byte_size:
            raise InvalidInput(
                f"shared memory object '{self.key}' of region '{self.name}' shrank to "
                f"{size} bytes after registration; unregister and register it again"
            )

    def read(self, tensor: str, offset: int, byte_size: int) -> memoryview:
        return self._slice(tensor, offset, byte_size).toreadonly()

    def target(self, tensor: str, offset: int, byte_size: int) -> OutputTarget:
        self._slice(tensor, offset, byte_size)
        return OutputTarget(self, tensor, offset, byte_size)


@dataclass(frozen=True)
class OutputTarget:
    """Where a requested output goes: a byte range of a region."""

    region: Region
    tensor: str
    offset: int
    byte_size: int

    def write(self, data: bytes | memoryview) -> None:
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size > self.byte_size:
            raise InvalidInput(
                f"output '{self.tensor}' needs {size} bytes but its shared memory range in "
                f"region '{self.region.name}' holds {self.byte_size}; raise "
                "shared_memory_byte_size (and the region) to at least that"
            )
        self.region._slice(self.tensor, self.offset, size)[:] = data


class SharedMemoryRegions:
    """The registered system shared memory regions, by name."""

    def __init__(
        self, allowed: bool, root: Path = SHM_ROOT, max_regions: int = MAX_REGIONS
    ) -> None:
        self.allowed = allowed
        self.root = root
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}

    def _require_allowed(self) -> None:
        if not self.allowed:
            raise PermissionDenied(DISABLED_MESSAGE)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._require_allowed()
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(
                f"shared memory region '{name}' is already registered; unregister it first "
                "or pick another name"
            )
        if byte_size <= 0:
            raise InvalidInput(f"shared memory region '{name}' needs a byte_size above 0")
        if len(self._regions) >= self.max_regions:
            raise ResourceExhausted(
                f"{self.max_regions} shared memory regions are registered, the most this "
                "server holds; unregister regions no longer in use"
            )
        self._regions[name] = Region(name, key, offset, byte_size, self.root)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (every region when empty); unknown names are ignored, as in
        Triton. Requests already holding its memory finish with it."""
        self._require_allowed()
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str) -> list[Region]:
        self._require_allowed()
        if not name:
            return list(self._regions.values())
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"no shared memory region '{name}' is registered")
        return [region]

    def region(self, tensor: str, name: str) -> Region:
        self._require_allowed()
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(
                f"tensor '{tensor}' names shared memory region '{name}', which is not "
                "registered; register it with SystemSharedMemoryRegister first"
            )
        return region


def _checked_key(key: str) -> str:
    """The object's file name under /dev/shm: shm_open's names, '/name' or 'name'."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidInput(
            f"shared memory key {key!r} is not a shared memory object name; use the "
            "name given to shm_open, such as '/input0'"
        )
    return name
