"""Shared memory between a frontend and the model owner, and a small allocator over it.

One anonymous memory file (``memfd_create``) per frontend connection, passed to the
owner over the unix socket (SCM_RIGHTS): it has no name under /dev/shm, so nothing is
left there when either process dies, and Docker's 64 MiB /dev/shm limit does not
apply. The file is split in two halves: the frontend writes request tensors into the
first, the owner writes answer tensors into the second. Each half is allocated only by
the side that writes it; the reader tells the writer when a block may be reused.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os

# Blocks start on cache-line boundaries: a tensor read by a vectorised kernel then
# never straddles a line at its start, and neighbours never share a line.
ALIGN = 64


def _aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


class Allocator:
    """First fit over free ranges kept sorted by offset, merged with their neighbours
    when freed. A connection holds a block per tensor in flight, a few hundred at most,
    so a linear scan is cheap; a full arena is not an error (the tensor goes inline)."""

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size
        self._free_at: list[int] = [start]  # offsets of free ranges, sorted
        self._free_size: dict[int, int] = {start: size}
        self._used: dict[int, int] = {}
        self.allocations = 0  # ever made: shows tensors did cross through this half

    @property
    def used_bytes(self) -> int:
        return sum(self._used.values())

    @property
    def blocks(self) -> int:
        return len(self._used)

    def alloc(self, nbytes: int) -> int | None:
        """The offset of a block of at least ``nbytes``, or None when none is free."""
        size = _aligned(max(nbytes, 1))
        for i, offset in enumerate(self._free_at):
            free = self._free_size[offset]
            if free < size:
                continue
            del self._free_size[offset]
            if free == size:
                del self._free_at[i]
            else:
                self._free_at[i] = offset + size
                self._free_size[offset + size] = free - size
            self._used[offset] = size
            self.allocations += 1
            return offset
        return None

    def free(self, offset: int) -> None:
        size = self._used.pop(offset)  # KeyError: a block freed twice is a bug
        i = bisect.bisect(self._free_at, offset)
        if i < len(self._free_at) and offset + size == self._free_at[i]:  # merge right
            size += self._free_size.pop(self._free_at.pop(i))
        if i > 0:
            left = self._free_at[i - 1]
            if left + self._free_size[left] == offset:  # merge left
                self._free_size[left] += size
                return
        self._free_at.insert(i, offset)
        self._free_size[offset] = size


class Arena:
    """A shared mapping of ``2 * half`` bytes: [0, half) requests, [half, 2 * half)
    answers."""

    def __init__(self, fd: int, half: int) -> None:
        self.fd, self.half = fd, half
        self._map = mmap.mmap(fd, 2 * half, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.memory = memoryview(self._map)

    @classmethod
    def create(cls, half: int, label: str) -> Arena:
        """A new arena; the caller sends ``fd`` to the peer. Pages are allocated only
        when first written."""
        fd = os.memfd_create(label, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, 2 * half)
            return cls(fd, half)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> Arena:
        """The arena a peer created, from its descriptor (now owned here)."""
        size = os.fstat(fd).st_size
        if size <= 0 or size % 2:
            os.close(fd)
            raise ValueError(f"shared memory of {size} bytes is not an arena")
        return cls(fd, size // 2)

    def requests(self) -> Allocator:
        return Allocator(0, self.half)

    def answers(self) -> Allocator:
        return Allocator(self.half, self.half)

    def close(self) -> None:
        """Unmap and close. Arrays still viewing the memory keep the mapping alive
        (their buffers hold it), so this never pulls memory from under a reader."""
        self.memory.release()
        # Exported views remain: the mapping goes when the last one does.
        with contextlib.suppress(BufferError):
            self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
