"""A frontend's gRPC services with owner-placed models: inference, model queries,
statistics, loads and admin calls about them are answered by the owner (once), the
frontend's own models by the frontend, and lists by both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

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
from warpserve.server.owner.forwarding import forward_owned, forward_owned_admin
from warpserve.server.owner.process import RunningOwner, control_target

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@contextlib.asynccontextmanager
async def frontend_server(
    frontend: Frontend, socket_dir: Path
) -> AsyncIterator[tuple[pb_grpc.GRPCInferenceServiceStub, apb_grpc.ModelAdminStub]]:
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
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.GRPCInferenceServiceStub(channel), apb_grpc.ModelAdminStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
        await to_owner.close()


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path,
) -> AsyncIterator[
    tuple[RunningOwner, Frontend, pb_grpc.GRPCInferenceServiceStub, apb_grpc.ModelAdminStub]
]:
    repo, sockets = tmp_path / "repo", tmp_path / "sockets"
    write_repo(repo)
    write_affine(repo, "local")  # placed in the frontend
    owner = await start_owner(repo, sockets)
    frontend = await start_frontend(repo, sockets)
    await frontend.dataplane.registry.load("local")
    try:
        async with frontend_server(frontend, sockets) as (stub, admin):
            yield owner, frontend, stub, admin
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
        async with served(tmp_path) as (_, frontend, stub, _):
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
        async with served(tmp_path) as (owner, _, stub, _):
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
        async with served(tmp_path) as (owner, _, _, admin):
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


def test_owner_down_is_unavailable_for_its_models_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (owner, _, stub, _):
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
