"""The HTTP endpoint: aiohttp's low-level server on the gRPC server's event loop.

Requests are handled on the loop that runs grpc.aio, the batcher and the inline models,
so a REST request reaches the data plane with no thread hop, as a gRPC one does. The
listening socket is bound with SO_REUSEPORT, so that several server processes can share
one port (the kernel spreads connections among them).

aiohttp was chosen over Starlette on uvicorn by measurement (bench/bench_http.py).
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass

from aiohttp import web

from warpserve.server.http.routes import RestApi
from warpserve.server.ports import unavailable

log = logging.getLogger(__name__)

FLAG = "--http-port"
BACKLOG = 1024


def listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``address:port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise unavailable(address, port, FLAG, "HTTP", exc) from None
    return sock


@dataclass
class HttpServer:
    runner: web.ServerRunner
    port: int

    async def stop(self, grace_s: float) -> None:
        """Close the listener and idle connections; requests in progress get up to
        ``grace_s`` to finish (the shutdown has already waited for admitted ones)."""
        await self.runner.shutdown()
        await self.runner.cleanup()


async def start_http(
    api: RestApi, sock: socket.socket, ssl_context: ssl.SSLContext | None = None
) -> HttpServer:
    # handler_cancellation off (aiohttp's default): a client that disconnects does not
    # cancel its request, which finishes and is counted like any other.
    server = web.Server(api.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.SockSite(
        runner, sock, backlog=BACKLOG, shutdown_timeout=1.0, ssl_context=ssl_context
    )
    await site.start()
    return HttpServer(runner, sock.getsockname()[1])
