"""Messages between a frontend and the model owner over their unix socket.

A message is a small tuple (its kind, the request's id, names...) and a dict of
tensors. A frame holds the header (lengths), a pickle of the tuple and of one
descriptor per tensor (name, dtype, shape, and where its bytes are), then the bytes of
the tensors that travel inline. A tensor of at least ``inline_below`` bytes goes
instead into a block of the sender's half of the arena, and its descriptor names the
block; the receiver builds numpy arrays straight from the bytes (no pickle of numpy
arrays, which costs several microseconds per tensor each way). Smaller tensors travel
in the frame: for them a socket copy costs less than a block's allocation and its
release (bench/bench_owner.py measures both). BYTES tensors (numpy object arrays)
always travel inside the pickle.

Both ends are processes of one server, of one user, over a socket in a directory
only that user can enter (see ``process``): pickle is safe here, where a peer that
can connect could as well attach a debugger to either process.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from warpserve.server.owner.arena import Allocator, Arena

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # frame length after the header, pickle length
# Larger tensors go through shared memory (measured on bench_owner.py's hop).
INLINE_BELOW = 64 * 1024
# A peer that sends a frame longer than this is broken; the connection is dropped.
MAX_FRAME = 1 << 31
_INLINE, _PICKLED = -1, -2  # a descriptor's place when not an arena offset

Message = tuple[Any, ...]
Tensors = dict[str, np.ndarray]
Blocks = list[tuple[int, int]]  # (offset, bytes) in the arena


def encode(
    message: Message,
    tensors: Tensors | None = None,
    arena: Arena | None = None,
    allocator: Allocator | None = None,
    inline_below: int = INLINE_BELOW,
) -> tuple[bytes, Blocks]:
    """The frame for ``message`` and its tensors, and the arena blocks it took (freed
    by the caller when the peer is done with them). A full arena leaves a tensor
    inline."""
    described: list[tuple[Any, ...]] = []
    inline: list[memoryview] = []
    blocks: Blocks = []
    for name, array in (tensors or {}).items():
        if array.dtype.hasobject:
            described.append((name, None, None, _PICKLED, array))
            continue
        # Bytes of any fixed-size dtype (bfloat16 too, which has no buffer format).
        flat = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        offset = _INLINE
        if arena is not None and allocator is not None and flat.nbytes >= inline_below:
            taken = allocator.alloc(flat.nbytes)
            if taken is not None:
                offset = taken
                arena.memory[offset : offset + flat.nbytes] = flat
                blocks.append((offset, flat.nbytes))
        if offset == _INLINE:
            inline.append(flat)
        described.append((name, _portable(array.dtype), array.shape, offset, flat.nbytes))
    body = pickle.dumps((message, described), protocol=pickle.HIGHEST_PROTOCOL)
    length = len(body) + sum(part.nbytes for part in inline)
    return b"".join([_HEADER.pack(length, len(body)), body, *inline]), blocks


def _portable(dtype: np.dtype[Any]) -> Any:
    """The dtype's short name, or the dtype itself where the name loses it (bfloat16
    reads '<V2')."""
    return dtype if dtype.kind == "V" else dtype.str


def _decode(
    frame: memoryview, body_length: int, arena: Arena, copy_blocks: bool, owned: bool
) -> tuple[Message, Tensors, Blocks]:
    message, described = pickle.loads(frame[:body_length])
    tensors: Tensors = {}
    blocks: Blocks = []
    position = body_length
    memory = arena.memory
    for name, dtype, shape, offset, extra in described:
        if offset == _PICKLED:
            tensors[name] = extra
            continue
        if offset == _INLINE:
            data: Any = frame[position : position + extra]
            if not owned:
                data = data.tobytes()  # the receive buffer is reused
            position += extra
        else:
            blocks.append((offset, extra))
            view = memory[offset : offset + extra]
            # The owner reads requests in place (read-only: see ``service``); a frontend
            # copies answers out, so the owner may reuse their blocks at once.
            data = view.tobytes() if copy_blocks else view.toreadonly()
        tensors[name] = np.frombuffer(data, dtype).reshape(shape)
    return message, tensors, blocks


class Channel(asyncio.Protocol):
    """One end of a connection: frames in, messages out to ``on_message``.

    ``copy_blocks``: the receiver copies tensors out of the peer's blocks (the answer
    side, which then releases them at once) instead of viewing them (the owner, whose
    views live until it answers, when the frontend reuses the block).
    """

    def __init__(
        self,
        arena: Arena,
        on_message: Callable[[Message, Tensors, Blocks], None],
        on_lost: Callable[[Exception | None], None],
        *,
        copy_blocks: bool,
    ) -> None:
        self.arena = arena
        self._on_message = on_message
        self._on_lost = on_lost
        self._copy = copy_blocks
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's, only alike.)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(exc)

    def send(self, frame: bytes) -> bool:
        """Queue a frame for this loop pass's write; False when the connection is gone.

        Frames sent in one pass of the event loop (the answers of one batch, the
        requests of many callers) leave in one write, and arrive in one read."""
        if self.transport is None or self.transport.is_closing():
            return False
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._buffer:
            # The usual case, whole frames in one read: parsed from the received bytes,
            # whose inline tensors the arrays then view (bytes never change).
            used = self._parse(data, owned=True)
            if used < len(data):
                self._buffer += memoryview(data)[used:]
            return
        self._buffer += data
        used = self._parse(self._buffer, owned=False)
        del self._buffer[:used]

    def _parse(self, source: bytes | bytearray, owned: bool) -> int:
        """Deliver the whole frames at the start of ``source``; the bytes they took.
        ``owned``: tensors may view ``source`` (immutable), else they copy from it."""
        start, size = 0, len(source)
        with memoryview(source) as whole:
            while size - start >= _HEADER.size:
                length, body_length = _HEADER.unpack_from(source, start)
                end = start + _HEADER.size + length
                if length > MAX_FRAME or body_length > length:
                    log.error("model owner connection: a malformed frame; dropping it")
                    self.close()
                    return size
                if size < end:
                    break
                with whole[start + _HEADER.size : end] as frame:
                    message, tensors, blocks = _decode(
                        frame, body_length, self.arena, self._copy, owned
                    )
                self._on_message(message, tensors, blocks)
                start = end
        return start
