"""A frontend's gRPC services and REST endpoint with owner-placed models: inference,
model queries, statistics, loads and admin calls about them are answered by the owner
(once), the frontend's own models by the frontend, and lists by both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from tests.models import affine_reference, write_affine
from tests.server.owner.harness import (
    MODEL,
    Frontend,
    start_frontend,
    start_owner,
    stop_owner,
    write_repo,
)
from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.grpc.admin import AdminServicer
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.http.routes import RestApi
from warpserve.server.http.server import listening_socket, start_http
from warpserve.server.http.statuspage import STATUS_PATH, add_status_page
from warpserve.server.options import ServerOptions
from warpserve.server.owner.forwarding import forward_owned, forward_owned_admin
from warpserve.server.owner.process import RunningOwner, control_target

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Served:
    owner: RunningOwner
    frontend: Frontend
    stub: pb_grpc.GRPCInferenceServiceStub
    admin: apb_grpc.ModelAdminStub
    http: str  # the frontend's REST endpoint, "http://127.0.0.1:PORT"


@contextlib.asynccontextmanager
async def frontend_server(
    frontend: Frontend, socket_dir: Path
) -> AsyncIterator[tuple[pb_grpc.GRPCInferenceServiceStub, apb_grpc.ModelAdminStub, str]]:
    """The frontend's gRPC services and, on the same server API, its REST endpoint."""
    registry = frontend.dataplane.registry
    to_owner = grpc.aio.insecure_channel(control_target(socket_dir))
    servicer = InferenceServicer(frontend.dataplane, registry)
    forward_owned(servicer, frontend.proxy, to_owner)
    admin = AdminServicer(registry, TOKEN)
    forward_owned_admin(admin, frontend.proxy, to_owner)
    server = grpc.aio.server()
    add_inference_service(servicer, server)
    apb_grpc.add_ModelAdminServicer_to_server(admin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    rest = RestApi(frontend.dataplane, servicer.api, 1 << 20)
    add_status_page(rest, servicer.api, ServerOptions(http_address="127.0.0.1"))
    http = await start_http(rest, listening_socket("127.0.0.1", 0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield (
            pb_grpc.GRPCInferenceServiceStub(channel),
            apb_grpc.ModelAdminStub(channel),
            f"http://127.0.0.1:{http.port}",
        )
    finally:
        await channel.close()
        await http.stop(1.0)
        await server.stop(None)
        await to_owner.close()


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    repo, sockets = tmp_path / "repo", tmp_path / "sockets"
    write_repo(repo)
    write_affine(repo, "local")  # placed in the frontend
    owner = await start_owner(repo, sockets)
    frontend = await start_frontend(repo, sockets)
    await frontend.dataplane.registry.load("local")
    try:
        async with frontend_server(frontend, sockets) as (stub, admin, http):
            yield Served(owner, frontend, stub, admin, http)
    finally:
        await frontend.proxy.close()
        await frontend.dataplane.registry.close()
        await stop_owner(owner)


def infer_request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="r")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


async def model_infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> np.ndarray:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    reply = await stub.ModelInfer(infer_request(model, x))
    assert (reply.model_name, reply.model_version, reply.id) == (model, "1", "r")
    y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(2, 2)
    np.testing.assert_allclose(y, affine_reference(x, scale=1.0), rtol=1e-5, atol=1e-5)
    return y


def test_queries_about_owned_models_are_the_owners(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            frontend, stub = both.frontend, both.stub
            for model in (MODEL, MODEL, "local"):
                await model_infer(stub, model)
            stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL))
            (only,) = stats.model_stats
            assert (only.name, only.inference_count) == (MODEL, 4)  # two rows each
            everything = await stub.ModelStatistics(pb.ModelStatisticsRequest())
            counts = {s.name: s.inference_count for s in everything.model_stats}
            assert counts == {"local": 2, MODEL: 4}
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert sorted(m.name for m in index.models) == [MODEL, "local"]
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))
            assert ready.ready
            config = await stub.ModelConfig(pb.ModelConfigRequest(name=MODEL))
            assert "warpserve.placement" in config.config.parameters
            metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
            assert list(metadata.versions) == ["1"]
            assert not frontend.dataplane.registry.models.get(MODEL)

    asyncio.run(main())


def test_unload_and_load_happen_once_in_the_owner(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            owner, stub = both.owner, both.stub
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL))
            assert MODEL not in owner.registry.models
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await model_infer(stub, MODEL)
            assert down.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "not loaded" in (down.value.details() or "")
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))
            assert not ready.ready
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL))
            assert owner.registry.models[MODEL].ready_versions() == [1]
            await model_infer(stub, MODEL)

    asyncio.run(main())


def test_admin_calls_are_checked_then_forwarded(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            owner, admin = both.owner, both.admin
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await admin.Status(apb.StatusRequest(model=MODEL))
            assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await admin.Rollback(apb.RollbackRequest(model=MODEL))
            assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert owner.registry.models[MODEL].router.active == 1  # nothing reached it
            status = await admin.Status(apb.StatusRequest(model=MODEL), metadata=AUTH)
            (model,) = status.models
            assert model.model == MODEL and [v.version for v in model.versions if v.active] == [1]
            with pytest.raises(grpc.aio.AioRpcError) as nothing_before:
                await admin.Rollback(apb.RollbackRequest(model=MODEL), metadata=AUTH)
            assert nothing_before.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "previous version" in (nothing_before.value.details() or "")
            both = await admin.Status(apb.StatusRequest(), metadata=AUTH)
            assert sorted(m.model for m in both.models) == [MODEL, "local"]

    asyncio.run(main())


def test_the_status_page_lists_the_owners_models_with_their_versions(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            for model in (MODEL, "local"):
                await model_infer(both.stub, model)
            status, page = await rest(both.http, STATUS_PATH)
            assert status == 200, page
            models = {m["model"]: m for m in page["models"]}
            assert sorted(models) == [MODEL, "local"]
            for name in (MODEL, "local"):
                (version,) = models[name]["versions"]
                assert (version["version"], version["state"]) == (1, "READY") and version["active"]
                assert version["statistics"]["inference_count"] == 2  # the owner's count
            assert not both.frontend.dataplane.registry.models.get(MODEL)
            # Down, the owner's models stay listed, without versions, beside the rest.
            await both.owner.control.stop(None)
            status, page = await rest(both.http, STATUS_PATH)
            models = {m["model"]: m for m in page["models"]}
            assert sorted(models) == [MODEL, "local"] and models[MODEL]["versions"] == []
            assert models["local"]["versions"][0]["state"] == "READY"

    asyncio.run(main())


def test_owner_down_is_unavailable_for_its_models_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            owner, stub = both.owner, both.stub
            await owner.control.stop(None)
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10)
            assert down.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "model owner" in (down.value.details() or "")
            ready = await stub.ModelReady(pb.ModelReadyRequest(name="local"))
            assert ready.ready
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert [m.name for m in index.models] == ["local"]

    asyncio.run(main())


async def rest(base: str, path: str, method: str = "GET", **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, base + path, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


def test_rest_queries_about_owned_models_are_the_owners(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as both:
            http = both.http
            for model in (MODEL, "local"):
                await model_infer(both.stub, model)
            assert (await rest(http, f"/v2/models/{MODEL}/ready"))[0] == 200
            status, metadata = await rest(http, f"/v2/models/{MODEL}")
            assert status == 200 and metadata["name"] == MODEL and metadata["versions"] == ["1"]
            status, config = await rest(http, f"/v2/models/{MODEL}/versions/1/config")
            assert status == 200 and "warpserve.placement" in config["parameters"]
            status, stats = await rest(http, f"/v2/models/{MODEL}/stats")
            assert status == 200 and stats["model_stats"][0]["inference_count"] == 2
            status, stats = await rest(http, "/v2/models/stats")
            counts = {s["name"]: s["inference_count"] for s in stats["model_stats"]}
            assert counts == {"local": 2, MODEL: 2}
            status, index = await rest(http, "/v2/repository/index", "POST")
            assert status == 200, index
            assert sorted(m["name"] for m in index) == [MODEL, "local"]
            # The owner's own answers to what it lacks, with their statuses.
            status, missing = await rest(http, f"/v2/models/{MODEL}/versions/7")
            assert status == 404 and MODEL in missing["error"]
            assert not both.frontend.dataplane.registry.models.get(MODEL)

            unload = f"/v2/repository/models/{MODEL}/unload"
            assert (await rest(http, unload, "POST"))[0] == 200
            assert MODEL not in both.owner.registry.models
            assert (await rest(http, f"/v2/models/{MODEL}/ready"))[0] == 400
            load = f"/v2/repository/models/{MODEL}/load"
            assert (await rest(http, load, "POST"))[0] == 200
            assert both.owner.registry.models[MODEL].ready_versions() == [1]

            await both.owner.control.stop(None)
            status, down = await rest(http, f"/v2/models/{MODEL}/config")
            assert status == 503 and "model owner" in down["error"]
            assert (await rest(http, "/v2/models/local/ready"))[0] == 200
            status, index = await rest(http, "/v2/repository/index", "POST")
            assert [m["name"] for m in index] == ["local"]

    asyncio.run(main())
