"""The KServe v2 REST endpoints (with Triton's extensions): decode, call the data plane
or the server API, encode. Paths are matched here rather than by a router object: a
dozen shapes, and the inference path is matched first with a few string operations."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import InvalidInput, ModelNotFound, Unimplemented, WarpserveError
from warpserve.server.grpc.inference import NO_CUDA_SHM
from warpserve.server.http import decoding, tensors
from warpserve.server.http.jsonproto import to_json
from warpserve.server.http.status import BodyTooLarge, http_status
from warpserve.server.inflight import CALL
from warpserve.server.serverapi import ServerApi

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
JSON = "application/json"


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(), status=status, content_type=JSON
    )


def error_response(exc: BaseException) -> web.Response:
    status, message = http_status(exc)
    return json_response({"error": message}, status)


def _ok_or_400(flag: bool) -> web.Response:
    # Triton answers health and readiness with 200, or 400 when the answer is no.
    return web.Response(status=200 if flag else 400)


class MethodNotAllowed(InvalidInput):
    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}")
        self.allowed = allowed


class RestApi:
    """Answers one request: ``await api.handle(request)``. Pages beside the protocol
    (the status page) are added with ``add_page``."""

    def __init__(self, dataplane: DataPlane, server: ServerApi, max_input_bytes: int) -> None:
        self.dataplane = dataplane
        self.server = server
        self.max_input_bytes = max_input_bytes
        self._pages: dict[str, tuple[Handler, tuple[str, ...]]] = {}

    def add_page(
        self, path: str, handler: Handler, methods: tuple[str, ...] = ("GET", "HEAD")
    ) -> None:
        """Serve ``path`` with ``handler`` for ``methods``."""
        self._pages[path] = (handler, methods)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except MethodNotAllowed as exc:
            response = error_response(exc)
            response.set_status(405)
            response.headers["Allow"] = exc.allowed
            return response
        except (WarpserveError, ValueError, KeyError, TypeError) as exc:
            return error_response(exc)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.endswith("/infer") and path.startswith("/v2/models/"):
            _require(request, "POST")
            name, version = _model_and_version(path[len("/v2/models/") : -len("/infer")])
            return await self.infer(request, name, version)
        page = self._pages.get(path)
        if page is not None:
            handler, methods = page
            _require(request, *methods)
            return await handler(request)
        parts = path.strip("/").split("/")
        if parts[0] != "v2":
            raise ModelNotFound(f"no endpoint at {path}; the API is under /v2, a status page at /")
        return await self._v2(request, parts[1:])

    async def _v2(self, request: web.BaseRequest, parts: list[str]) -> web.StreamResponse:
        head = parts[0] if parts else ""
        if not parts or parts == [""]:
            _require(request, "GET")
            return json_response(to_json(self.server.server_metadata()))
        if head == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            _require(request, "GET")
            live = parts[1] == "live"
            return _ok_or_400(self.server.live if live else await self.server.server_ready())
        if head == "models":
            return await self._models(request, parts[1:])
        if head == "repository":
            return await self._repository(request, parts[1:])
        if head == "systemsharedmemory":
            return await self._shm(request, parts[1:])
        if head == "cudasharedmemory":
            raise Unimplemented(NO_CUDA_SHM)
        raise ModelNotFound(f"no endpoint at {request.path}")

    async def _models(self, request: web.BaseRequest, parts: list[str]) -> web.StreamResponse:
        _require(request, "GET")
        if parts == ["stats"]:
            return json_response(to_json(await self.server.statistics()))
        action = ""
        if parts and parts[-1] in ("ready", "config", "stats"):
            action = parts.pop()
        name, version = _model_and_version("/".join(parts))
        if action == "ready":
            return _ok_or_400(await self.server.model_ready(name, version))
        if action == "config":
            return json_response(to_json(await self.server.model_config(name, version)))
        if action == "stats":
            return json_response(to_json(await self.server.statistics(name, version)))
        return json_response(to_json(await self.server.model_metadata(name, version)))

    async def _repository(self, request: web.BaseRequest, parts: list[str]) -> web.StreamResponse:
        _require(request, "POST")
        if parts == ["index"]:
            body = await self._json_body(request)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput(f"'ready' must be true or false, got {ready!r}")
            index = await self.server.repository_index(ready_only=ready)
            return json_response(to_json(index)["models"])
        if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
            name = parts[1]
            body = await self._json_body(request)
            if parts[2] == "load":
                await self.server.load(_load_request(name, body))
            else:
                await self.server.unload(name)
            return web.Response(status=200)
        raise ModelNotFound(f"no endpoint at {request.path}")

    async def _shm(self, request: web.BaseRequest, parts: list[str]) -> web.StreamResponse:
        name = ""
        if len(parts) == 3 and parts[0] == "region":
            name = parts[1]
            parts = parts[2:]
        if parts == ["status"]:
            _require(request, "GET")
            regions = [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in self.server.shm_status(name)
            ]
            return json_response(regions)
        _require(request, "POST")
        if parts == ["register"] and name:
            body = await self._json_body(request)
            key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
            if not (isinstance(key, str) and isinstance(offset, int) and isinstance(size, int)):
                raise InvalidInput(
                    'register takes {"key": string, "offset": integer, "byte_size": integer}'
                )
            await self.server.shm_register(name, key, offset, size)
            return web.Response(status=200)
        if parts == ["unregister"]:
            await self.server.shm_unregister(name)
            return web.Response(status=200)
        raise ModelNotFound(f"no endpoint at {request.path}")

    async def infer(self, request: web.BaseRequest, name: str, version: str) -> web.Response:
        # Admitted before the body is read: a shutdown answers what got this far.
        with self.dataplane.calls.admit(CALL):
            body = await self.read_body(request)
            json_size = tensors.header_length(request.headers.get(tensors.HEADER_LENGTH), len(body))
            decoded, fmt = decoding.decode_infer(body, json_size, name, version, self.server.shm)
            mv, outputs = await self.dataplane.infer(decoded)
            parts, head = tensors.encode_infer(mv.name, str(mv.version), decoded, outputs, fmt)
        if head is None:
            return web.Response(body=parts[0], content_type=JSON)
        response = web.Response(body=b"".join(parts), content_type="application/octet-stream")
        response.headers[tensors.HEADER_LENGTH] = str(head)
        return response

    async def read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.max_input_bytes
        length = request.content_length
        if length is not None:
            if length > limit:
                raise BodyTooLarge(length, limit)
            if length == 0:  # aiohttp's readexactly(0) on an empty body raises
                return b""
            try:
                return await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise InvalidInput(
                    f"the body ended after {len(exc.partial)} of the {length} bytes its "
                    "Content-Length announced; send a Content-Length that matches the body"
                ) from None
        chunks: list[bytes] = []  # chunked: counted as it arrives
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(None, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json_body(self, request: web.BaseRequest) -> dict[str, Any]:
        body = await self.read_body(request)
        if not body.strip():
            return {}
        document = tensors.parse_json(body, "request body")
        if not isinstance(document, dict):
            raise InvalidInput("the request body must be a JSON object")
        return document


def _require(request: web.BaseRequest, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(request.method, ", ".join(methods))


def _model_and_version(rest: str) -> tuple[str, str]:
    """'m' or 'm/versions/v' (as in the path) -> (name, version)."""
    parts = rest.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    raise ModelNotFound(
        f"no endpoint at /v2/models/{rest}; model paths are /v2/models/NAME[/versions/N]"
    )


def _load_request(name: str, body: dict[str, Any]) -> pb.RepositoryModelLoadRequest:
    """A REST load's body as the gRPC request: parameters 'config' (JSON text) and
    'file:<path>' (base64 content, as Triton's REST endpoint takes it)."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    for key, value in params.items():
        param = request.parameters[key]
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidInput(f"load parameter '{key}' must be base64 text")
            try:
                param.bytes_param = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise InvalidInput(f"load parameter '{key}' is not base64: {exc}") from None
        elif isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, dict) and key == "config":
            param.string_param = json.dumps(value)
        else:
            raise InvalidInput(f"load parameter '{key}' must be a string, integer or boolean")
    return request
