"""warpserve with its REST endpoint on Starlette under uvicorn instead of aiohttp, for
bench_http.py's comparison of HTTP stacks.

The same server (gRPC, data plane, server API) starts in-process with its own HTTP
endpoint off; a Starlette app on uvicorn (httptools parser, on the same event loop) serves
what perf_analyzer calls: health, metadata, config, statistics and inference, through the
same decode, data plane and encode calls as the aiohttp endpoint. Only the HTTP stack
differs.

    python bench/http_starlette.py --model-repository REPO --grpc-port G --http-port H
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from warpserve.server.grpc.server import start_server
from warpserve.server.http import decoding, tensors
from warpserve.server.http.jsonproto import to_json
from warpserve.server.http.server import listening_socket
from warpserve.server.http.status import http_status
from warpserve.server.inflight import CALL
from warpserve.server.options import ServerOptions
from warpserve.server.serverapi import ServerApi


def build_app(server: ServerApi) -> Starlette:
    dataplane = server.dataplane

    def failed(exc: Exception) -> JSONResponse:
        status, message = http_status(exc)
        return JSONResponse({"error": message}, status)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if await server.server_ready() else 400)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(to_json(server.server_metadata()))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        return Response(
            status_code=200 if await server.model_ready(p["m"], p.get("v", "")) else 400
        )

    async def metadata(request: Request) -> Response:
        p = request.path_params
        try:
            return JSONResponse(to_json(await server.model_metadata(p["m"], p.get("v", ""))))
        except Exception as exc:
            return failed(exc)

    async def config(request: Request) -> Response:
        p = request.path_params
        try:
            return JSONResponse(to_json(await server.model_config(p["m"], p.get("v", ""))))
        except Exception as exc:
            return failed(exc)

    async def stats(request: Request) -> Response:
        p = request.path_params
        try:
            return JSONResponse(to_json(await server.statistics(p["m"], p.get("v", ""))))
        except Exception as exc:
            return failed(exc)

    async def infer(request: Request) -> Response:
        p = request.path_params
        try:
            with dataplane.calls.admit(CALL):
                body = await request.body()
                size = tensors.header_length(request.headers.get(tensors.HEADER_LENGTH), len(body))
                decoded, fmt = decoding.decode_infer(body, size, p["m"], p.get("v", ""), server.shm)
                mv, outputs = await dataplane.infer(decoded)
                parts, head = tensors.encode_infer(mv.name, str(mv.version), decoded, outputs, fmt)
        except Exception as exc:
            return failed(exc)
        if head is None:
            return Response(parts[0], media_type="application/json")
        headers = {tensors.HEADER_LENGTH: str(head)}
        return Response(b"".join(parts), media_type="application/octet-stream", headers=headers)

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/ready", ready),
        Route("/v2/health/live", ready),
    ]
    for prefix in ("/v2/models/{m}", "/v2/models/{m}/versions/{v}"):
        routes += [
            Route(prefix, metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/config", config),
            Route(prefix + "/stats", stats),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    return Starlette(routes=routes)


async def main(args: argparse.Namespace) -> int:
    options = ServerOptions(
        model_repository=args.model_repository,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_http=False,
        allow_metrics=False,
    )
    running = await start_server(options)
    server = running.api
    assert server is not None
    config = uvicorn.Config(
        build_app(server), loop="none", http="httptools", access_log=False, log_level="warning"
    )
    web_server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT while it serves (and passes them on after): enough
    # for a benchmark, which only needs the process gone.
    await web_server.serve(sockets=[listening_socket("127.0.0.1", args.http_port)])
    return await running.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    import uvloop

    raise SystemExit(uvloop.run(main(parser.parse_args())))
