"""The admin API in-process (start_server on a free loopback port): credentials, where it
is served, status, swap and rollback under streaming load, failed rollouts, overrides
that try to leave the repository, and the lifecycle metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.models import affine_reference, write_affine, write_golden
from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.grpc.admin import AdminExposureError, admin_exposure
from warpserve.server.grpc.server import RunningServer, start_server
from warpserve.server.options import ServerOptions

MODEL = "affine"
TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@contextlib.asynccontextmanager
async def serving(repo: Path, **options: Any) -> AsyncIterator[tuple[RunningServer, Any]]:
    """A server on a free port and a channel to it; both closed afterwards."""
    settings: dict[str, Any] = {
        "grpc_address": "127.0.0.1",
        "grpc_port": 0,
        "metrics_address": "127.0.0.1",
        "metrics_port": 0,
        "allow_metrics": False,
        "allow_http": False,  # Triton's default port may be taken on the machine
        "exit_timeout_secs": 5.0,
        **options,
    }
    running = await start_server(ServerOptions(model_repository=repo, **settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    try:
        yield running, channel
    finally:
        await channel.close()
        await running.shutdown()


def x_rows(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-2, 2, (1, 4)).astype(np.float32)


def request(x: np.ndarray, version: str = "", rid: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=MODEL, model_version=version, id=rid)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def answer_version(reply: pb.ModelInferResponse, x: np.ndarray) -> int:
    """The response's model_version, after checking the numbers came from that version."""
    version = int(reply.model_version)
    out = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(-1, 2)
    assert np.allclose(out, affine_reference(x, scale=float(version)), atol=1e-4), (
        f"the answer labelled version {version} holds another version's numbers"
    )
    return version


async def infer(channel: Any, x: np.ndarray, **kw: str) -> int:
    reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(x, **kw))
    return answer_version(reply, x)


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# --- credentials and exposure -------------------------------------------------------------

ALL_CALLS: dict[str, Any] = {
    "Rollout": apb.RolloutRequest(model=MODEL, version=1),
    "Promote": apb.PromoteRequest(model=MODEL),
    "Rollback": apb.RollbackRequest(model=MODEL),
    "SetTrafficSplit": apb.SetTrafficSplitRequest(model=MODEL, weights={1: 1.0}),
    "SetShadow": apb.SetShadowRequest(model=MODEL),
    "Load": apb.LoadRequest(model=MODEL),
    "Unload": apb.UnloadRequest(model=MODEL, version=9),
    "Status": apb.StatusRequest(),
}


def test_every_admin_call_needs_the_token(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path, admin_token=TOKEN) as (_, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            for name, message in ALL_CALLS.items():
                method = getattr(admin, name)
                code, text = await code_of(method(message))
                assert code is grpc.StatusCode.UNAUTHENTICATED, name
                assert "authorization: Bearer" in text
                wrong = (("authorization", "Bearer not-the-token"),)
                code, _ = await code_of(method(message, metadata=wrong))
                assert code is grpc.StatusCode.PERMISSION_DENIED, name
            status = await admin.Status(apb.StatusRequest(), metadata=AUTH)
            assert [m.model for m in status.models] == [MODEL]

    asyncio.run(main())


def test_on_loopback_without_a_token_the_admin_api_is_open(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (_, channel):
            status = await apb_grpc.ModelAdminStub(channel).Status(apb.StatusRequest())
            assert status.models[0].versions[0].state == "READY"

    asyncio.run(main())


def test_on_a_wildcard_address_without_a_token_only_inference_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        with caplog.at_level(logging.WARNING):
            async with serving(tmp_path, grpc_address="0.0.0.0") as (_, channel):
                code, _ = await code_of(
                    apb_grpc.ModelAdminStub(channel).Status(apb.StatusRequest())
                )
                assert code is grpc.StatusCode.UNIMPLEMENTED
                assert await infer(channel, np.ones((1, 4), np.float32)) == 1
        assert "WARPSERVE_ADMIN_TOKEN" in caplog.text and "not served" in caplog.text

    asyncio.run(main())


def test_on_a_wildcard_address_with_a_token_the_admin_api_is_served(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path, grpc_address="0.0.0.0", admin_token=TOKEN) as (_, ch):
            admin = apb_grpc.ModelAdminStub(ch)
            code, _ = await code_of(admin.Status(apb.StatusRequest()))
            assert code is grpc.StatusCode.UNAUTHENTICATED
            assert (await admin.Status(apb.StatusRequest(), metadata=AUTH)).models

    asyncio.run(main())


@pytest.mark.parametrize(
    ("address", "token", "served"),
    [
        ("127.0.0.1", None, True),
        ("localhost", None, True),
        ("::1", None, True),
        ("0.0.0.0", TOKEN, True),
        ("10.1.2.3", TOKEN, True),
        ("0.0.0.0", None, False),
        ("10.1.2.3", None, False),
        ("::", None, False),
    ],
)
def test_admin_exposure_rule(address: str, token: str | None, served: bool) -> None:
    assert admin_exposure(address, token) is served
    if served:
        assert admin_exposure(address, token, required=True)
    else:
        with pytest.raises(AdminExposureError, match=r"refusing to start.*WARPSERVE_ADMIN_TOKEN"):
            admin_exposure(address, token, required=True)


# --- status, rollout, canary, shadow --------------------------------------------------------


def test_status_reports_every_version_with_routing_counters_and_latency(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (_, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            write_affine(tmp_path, MODEL, (2, 3), config=False)
            reply = await admin.Rollout(
                apb.RolloutRequest(model=MODEL, version=2, canary_percent=25)
            )
            weights = {v.version: v.weight for v in reply.status.versions}
            assert weights == pytest.approx({1: 0.75, 2: 0.25})
            await admin.Load(apb.LoadRequest(model=MODEL, version=3))
            await admin.SetShadow(apb.SetShadowRequest(model=MODEL, version=3, percent=100))
            rng = np.random.default_rng(0)
            for _ in range(40):
                await infer(channel, x_rows(rng), rid=uuid.uuid4().hex)
            status = (await admin.Status(apb.StatusRequest(model=MODEL))).models[0]
            by_version = {v.version: v for v in status.versions}
            assert [v.state for v in status.versions] == ["READY"] * 3
            assert by_version[1].active and not by_version[2].active
            assert by_version[3].shadow and by_version[3].weight == 0.0
            served = by_version[1].success_count + by_version[2].success_count
            assert served == 40 and by_version[1].failure_count == 0
            assert by_version[1].latency.count == by_version[1].success_count
            assert 0 < by_version[1].latency.p50_ms <= by_version[1].latency.p99_ms
            assert by_version[1].in_flight == 0
            for _ in range(200):  # the mirrored requests finish after their callers
                status = (await admin.Status(apb.StatusRequest(model=MODEL))).models[0]
                if status.versions[2].success_count == 40:
                    break
                await asyncio.sleep(0.01)
            assert status.versions[2].success_count == 40
            assert status.versions[2].shadow_max_abs_diff > 0
            promoted = await admin.Promote(apb.PromoteRequest(model=MODEL))
            assert promoted.status.previous_version == 1
            assert [v.version for v in promoted.status.versions if v.active] == [2]

    asyncio.run(main())


def test_admin_calls_refuse_bad_arguments_with_the_right_codes(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (_, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            cases = [
                (admin.Rollout(apb.RolloutRequest(version=2)), "INVALID_ARGUMENT"),
                (admin.Rollout(apb.RolloutRequest(model=MODEL)), "INVALID_ARGUMENT"),
                (admin.Rollout(apb.RolloutRequest(model="../etc", version=1)), "INVALID_ARGUMENT"),
                (admin.Status(apb.StatusRequest(model="nope")), "NOT_FOUND"),
                (admin.Promote(apb.PromoteRequest(model=MODEL)), "FAILED_PRECONDITION"),
                (admin.Rollback(apb.RollbackRequest(model=MODEL)), "FAILED_PRECONDITION"),
                (
                    admin.SetShadow(apb.SetShadowRequest(model=MODEL, version=5, percent=10)),
                    "FAILED_PRECONDITION",
                ),
                (admin.Unload(apb.UnloadRequest(model=MODEL, version=4)), "NOT_FOUND"),
                (admin.Rollout(apb.RolloutRequest(model=MODEL, version=7)), "NOT_FOUND"),
            ]
            for call, expected in cases:
                code, text = await code_of(call)
                assert code.name == expected, text
                assert MODEL in text or "model" in text

    asyncio.run(main())


def test_unload_over_the_admin_api_then_requests_are_refused(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (_, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            reply = await admin.Unload(apb.UnloadRequest(model=MODEL))
            assert list(reply.status.versions) == []
            x = np.ones((1, 4), np.float32)
            code, text = await code_of(infer(channel, x))
            assert code is grpc.StatusCode.UNAVAILABLE and "not loaded" in text
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            code, _ = await code_of(
                stub.ModelInfer(pb.ModelInferRequest(model_name="unknown_model"))
            )
            assert code is grpc.StatusCode.NOT_FOUND
            assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
            status = await admin.Status(apb.StatusRequest(model=MODEL))
            assert list(status.models[0].versions) == []  # known, not loaded
            await admin.Load(apb.LoadRequest(model=MODEL))
            assert await infer(channel, x) == 1

    asyncio.run(main())


# --- swap under streaming load ---------------------------------------------------------------


class StreamClient:
    """One ModelStreamInfer stream sending a request as soon as the last one answered."""

    def __init__(self, channel: Any, seed: int) -> None:
        self.call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        self.rng = np.random.default_rng(seed)
        self.versions: list[int] = []
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            x = x_rows(self.rng)
            await self.call.write(request(x, rid=uuid.uuid4().hex))
            reply = await self.call.read()
            if reply.error_message:
                self.errors.append(reply.error_message)
            else:
                self.versions.append(answer_version(reply.infer_response, x))
        await self.call.done_writing()


async def progressed(clients: list[StreamClient], by: int) -> None:
    marks = [len(c.versions) for c in clients]
    for _ in range(5000):
        if all(len(c.versions) >= m + by for c, m in zip(clients, marks, strict=True)):
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the streams stopped making progress")


def test_rollout_and_rollback_under_streaming_load(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (running, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            clients = [StreamClient(channel, seed) for seed in range(4)]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await progressed(clients, 5)

            async def hold(point: str) -> None:
                await progressed(clients, 3)  # version 1 keeps serving meanwhile

            running.registry.hook = lambda p: hold(p) if p in ("warming", "swapping") else None
            write_affine(tmp_path, MODEL, (2,), config=False)
            await admin.Rollout(apb.RolloutRequest(model=MODEL, version=2))
            await progressed(clients, 5)
            reply = await admin.Rollback(apb.RollbackRequest(model=MODEL, reason="test"))
            assert [v.version for v in reply.status.versions if v.active] == [1]
            await progressed(clients, 5)
            stop.set()
            await asyncio.gather(*tasks)
            for client in clients:
                assert client.errors == []
                runs = [
                    v
                    for i, v in enumerate(client.versions)
                    if i == 0 or client.versions[i - 1] != v
                ]
                assert runs == [1, 2, 1]

    asyncio.run(main())


def test_a_failed_rollout_is_refused_and_its_reason_is_visible(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> None:
        async with serving(tmp_path) as (_, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            vdir = write_affine(tmp_path, MODEL, (2,), config=False) / "2"
            write_golden(vdir, 2, corrupt=True)
            code, text = await code_of(admin.Rollout(apb.RolloutRequest(model=MODEL, version=2)))
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert "serving version is unchanged" in text and "golden check" in text
            assert "max abs error" in text and "atol 0.0001" in text
            status = (await admin.Status(apb.StatusRequest(model=MODEL))).models[0]
            failed = next(v for v in status.versions if v.version == 2)
            assert failed.state == "FAILED" and "golden check" in failed.reason
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            states = {(m.version, m.state): m.reason for m in index.models}
            assert "golden check" in states[("2", "FAILED")] and ("1", "READY") in states
            assert await infer(channel, np.ones((1, 4), np.float32)) == 1
            # The failed version can be unloaded; the serving one stays.
            reply = await admin.Unload(apb.UnloadRequest(model=MODEL, version=2))
            assert {v.version: v.state for v in reply.status.versions} == {
                1: "READY",
                2: "UNLOADED",
            }
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert {(m.version, m.state) for m in index.models} == {
                ("1", "READY"),
                ("2", "UNLOADED"),
            }
            assert await infer(channel, np.ones((1, 4), np.float32)) == 1

    asyncio.run(main())


# --- overrides that try to leave the repository ---------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_model_load_file_overrides_cannot_leave_the_model_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_affine(repo, MODEL, (1,))
    write_affine(repo, "other", (1,))
    (tmp_path / "outside").mkdir()
    (repo / MODEL / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (repo / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    keys = [
        "file:../../etc/x",
        "file:../other/1/model.onnx",
        "file:1/../../x",
        f"file:{tmp_path}/outside/abs",
        "file:escape/x",
        "file:",
        "file:.",
        "file:1",
    ]
    before = snapshot(tmp_path)

    async def main() -> None:
        async with serving(repo) as (_, channel):
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for key in keys:
                params = {key: pb.ModelRepositoryParameter(bytes_param=b"payload")}
                code, text = await code_of(
                    stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name=MODEL, parameters=params)
                    )
                )
                assert code is grpc.StatusCode.INVALID_ARGUMENT, (key, text)
            for name in ("../outside", "linked"):
                params = {"file:1/model.onnx": pb.ModelRepositoryParameter(bytes_param=b"x")}
                code, text = await code_of(
                    stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name=name, parameters=params)
                    )
                )
                assert code is grpc.StatusCode.INVALID_ARGUMENT, (name, text)
            assert await infer(channel, np.ones((1, 4), np.float32)) == 1

    asyncio.run(main())
    assert snapshot(tmp_path) == before
    assert not Path("/etc/x").exists()


# --- metrics --------------------------------------------------------------------------------


def metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode()).splitlines()


def test_lifecycle_metrics_carry_model_and_version_labels(tmp_path: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))

    async def main() -> list[str]:
        async with serving(tmp_path, allow_metrics=True) as (running, channel):
            admin = apb_grpc.ModelAdminStub(channel)
            write_affine(tmp_path, MODEL, (2,), config=False)
            vdir = write_affine(tmp_path, MODEL, (3,), config=False) / "3"
            write_golden(vdir, 3, corrupt=True)
            await admin.Rollout(apb.RolloutRequest(model=MODEL, version=2))
            await admin.Rollback(apb.RollbackRequest(model=MODEL, reason="latency"))
            await code_of(admin.Rollout(apb.RolloutRequest(model=MODEL, version=3)))
            return await asyncio.to_thread(metric_lines, running.metrics_port)

    samples = parse_samples(asyncio.run(main()))
    assert samples["warpserve_model_version_active", "1"] == 1
    assert samples["warpserve_model_version_active", "2"] == 0
    assert samples["warpserve_rollouts_total", "2", ("outcome", "succeeded")] == 1
    assert samples["warpserve_rollouts_total", "3", ("outcome", "failed")] == 1
    assert samples["warpserve_rollbacks_total", "2", ("reason", "latency")] == 1
    assert samples["warpserve_model_version_state", "3", ("state", "FAILED")] == 1


def parse_samples(lines: list[str]) -> dict[tuple[Any, ...], float]:
    """'name{model="affine",version="2",x="y"} 1.0' -> {(name, "2", ("x", "y")): 1.0}."""
    samples: dict[tuple[Any, ...], float] = {}
    for line in lines:
        if not line or line.startswith("#") or "{" not in line:
            continue
        head, value = line.rsplit(" ", 1)
        name, _, body = head.partition("{")
        labels = dict(part.split("=", 1) for part in body.rstrip("}").split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.pop("model", None) != MODEL:
            continue
        version = labels.pop("version", "")
        samples[(name, version, *sorted(labels.items()))] = float(value)
    return samples
