"""Opening a frontend's connection to the model owner: the frontend sends a hello and
its arena's file descriptor (SCM_RIGHTS), the owner answers with the models it owns.
Blocking calls on a fresh socket, run on a worker thread, once per connection."""

from __future__ import annotations

import os
import pickle
import socket
from typing import Any

from warpserve.server.owner.arena import Arena

PROTOCOL = 1
HANDSHAKE_TIMEOUT_S = 5.0
_MAX_HELLO = 1 << 16


def hello(sock: socket.socket, arena: Arena, inline_below: int) -> dict[str, Any]:
    """Frontend side: send the arena (and the size from which tensors go through it,
    both ways), return the owner's welcome."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    greeting = {"protocol": PROTOCOL, "pid": os.getpid(), "inline_below": inline_below}
    socket.send_fds(sock, [pickle.dumps(greeting)], [arena.fd])
    welcome = pickle.loads(_read_sized(sock))
    if welcome.get("protocol") != PROTOCOL:
        raise ConnectionError(f"model owner speaks protocol {welcome.get('protocol')}")
    sock.setblocking(False)
    return dict(welcome)


def welcome(sock: socket.socket, owned: list[str]) -> tuple[Arena, dict[str, Any]]:
    """Owner side: take the frontend's arena, answer with the owned models."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    data, fds, _, _ = socket.recv_fds(sock, _MAX_HELLO, 1)
    if not data and not fds:
        raise EOFError("closed before its hello (a readiness probe)")
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("a frontend connected without its shared memory")
    arena = Arena.attach(fds[0])
    try:
        greeting = pickle.loads(data)
        if greeting.get("protocol") != PROTOCOL:
            raise ConnectionError(f"a frontend speaks protocol {greeting.get('protocol')}")
        reply = pickle.dumps({"protocol": PROTOCOL, "pid": os.getpid(), "models": owned})
        sock.sendall(len(reply).to_bytes(4, "little") + reply)
    except BaseException:
        arena.close()
        raise
    sock.setblocking(False)
    return arena, dict(greeting)


def _read_sized(sock: socket.socket) -> bytes:
    size = int.from_bytes(_read_exactly(sock, 4), "little")
    if size > _MAX_HELLO:
        raise ConnectionError(f"a {size}-byte handshake from the model owner")
    return _read_exactly(sock, size)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(left)
        if not part:
            raise ConnectionError("the model owner closed the connection during the handshake")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
