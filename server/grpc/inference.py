"""inference.GRPCInferenceService: decode, call the data plane, encode."""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server import codec, replies, wireplans
from warpserve.server.batching.request import Outputs
from warpserve.server.control.local import LocalControlPlane
from warpserve.server.control.plane import ControlPlane
from warpserve.server.dataplane import Answered, DataPlane
from warpserve.server.errors import Unimplemented, WarpserveError
from warpserve.server.grpc import limits
from warpserve.server.grpc.status import maps_errors, status_of
from warpserve.server.grpc.stream import StreamInference
from warpserve.server.inflight import CALL
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion, at_point
from warpserve.server.native.transport import NativeServer, TogetherAnswer
from warpserve.server.serverapi import ServerApi
from warpserve.server.shm import SharedMemoryRegions

NO_CUDA_SHM = (
    "CUDA shared memory is not supported by this server; register system shared memory "
    "(SystemSharedMemoryRegister) or send tensors in the request"
)


class InferenceServicer(StreamInference, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        registry: ModelRegistry,
        shm: SharedMemoryRegions | None = None,
        max_message_bytes: int | None = None,
        control: ControlPlane | None = None,
        api: ServerApi | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.registry = registry
        self.shm = shm if shm is not None else SharedMemoryRegions(allowed=False)
        # Loads, unloads, regions and statistics are server-wide: with several server
        # processes the control plane forwards them to the supervisor (control/).
        self.api = api or ServerApi(
            dataplane, registry, self.shm, control or LocalControlPlane(registry, self.shm)
        )
        # Requests and answers over it are refused with a hint naming the flag (limits).
        self.max_message_bytes = max_message_bytes
        # ModelInfer's and ModelStreamInfer's deserializer.
        self.receive: Callable[[bytes], codec.ReceivedInfer] = (
            wireplans.receive
            if max_message_bytes is None
            else limits.infer_receiver(max_message_bytes)
        )

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.api.live)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await self.api.server_ready())

    @maps_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(
            ready=await self.api.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request, context):
        return self.api.server_metadata()

    @maps_errors
    async def ModelMetadata(self, request, context):
        return await self.api.model_metadata(request.name, request.version)

    @maps_errors
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(
            config=await self.api.model_config(request.name, request.version)
        )

    @maps_errors
    async def ModelStatistics(self, request, context):
        return await self.api.statistics(request.name, request.version)

    @maps_errors
    async def RepositoryIndex(self, request, context):
        return await self.api.repository_index(ready_only=request.ready)

    @maps_errors
    async def RepositoryModelLoad(self, request, context):
        await self.api.load(request)
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(self, request, context):
        await self.api.unload(request.model_name, request.repository_name)
        return pb.RepositoryModelUnloadResponse()

    @maps_errors
    async def SystemSharedMemoryStatus(self, request, context):
        reply = pb.SystemSharedMemoryStatusResponse()
        for region in self.api.shm_status(request.name):
            reply.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return reply

    @maps_errors
    async def SystemSharedMemoryRegister(self, request, context):
        await self.api.shm_register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_errors
    async def SystemSharedMemoryUnregister(self, request, context):
        await self.api.shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_errors
    async def CudaSharedMemoryStatus(self, request, context):
        raise Unimplemented(NO_CUDA_SHM)

    @maps_errors
    async def CudaSharedMemoryRegister(self, request, context):
        raise Unimplemented(NO_CUDA_SHM)

    @maps_errors
    async def CudaSharedMemoryUnregister(self, request, context):
        raise Unimplemented(NO_CUDA_SHM)

    @maps_errors
    async def ModelInfer(self, request: codec.ReceivedInfer, context) -> bytes:
        return await self._infer(request, None, context)

    async def _infer(
        self,
        request: codec.ReceivedInfer | codec.InferRequest,
        mv: ModelVersion | None,
        context,
    ) -> bytes:
        """ModelInfer from ``request`` as received, or as ``infer_together`` decoded it
        (with ``mv``: routed by it to that version's queue)."""
        poller = self.dataplane.poller
        if poller is not None:  # counted until gRPC has sent the answer
            poller.call_started()
            context.add_done_callback(poller.call_ended)
        # Admitted before decoding: once a shutdown starts, a call that got this far
        # is answered for real and a later one gets UNAVAILABLE.
        with self.dataplane.calls.admit(CALL):
            hook = self.registry.hook
            if isinstance(request, codec.InferRequest):
                decoded = request
            else:
                if hook is not None:
                    await at_point(hook, "decoding")
                decoded = wireplans.decode_request(request, self.shm)
            deadline = context.time_remaining()
            if mv is None:
                answered, outputs = await self.dataplane.infer(decoded, deadline)
            else:
                answered, outputs = await self.dataplane.infer_queued(mv, decoded, deadline)
            if hook is not None:
                await at_point(hook, "encoding")
            return self._encoded(answered, decoded, outputs)

    def infer_together(self, payloads: list[bytes]) -> list[TogetherAnswer]:
        """ModelInfer for calls that arrived together (the native frontend hands them
        over at once, see ``NativeServer.add_together_handler``): those the data plane
        serves at once are answered here, without a task per call; the others continue
        as tasks from what was done (decoded, routed to a queue); those that did not
        decode take ModelInfer's own path, which words the error."""
        answers: list[TogetherAnswer] = [None] * len(payloads)
        if self.registry.hook is not None or self.dataplane.calls.draining:
            return answers  # test hooks see every stage; a draining server refuses
        places, requests = [], []
        for i, payload in enumerate(payloads):
            try:
                received = self.receive(payload)
                if received.error is not None:
                    continue
                requests.append(wireplans.decode_request(received, self.shm))
            except (WarpserveError, ValueError, KeyError, TypeError):
                continue
            places.append(i)
        outcomes = self.dataplane.infer_together(requests)
        poller = self.dataplane.poller
        for i, request, outcome in zip(places, requests, outcomes, strict=True):
            if isinstance(outcome, tuple):
                try:
                    answers[i] = self._encoded(outcome[0], request, outcome[1])
                except WarpserveError as exc:
                    answers[i] = status_of(exc)
                if poller is not None:  # until gRPC has sent it (see add_together_handler)
                    poller.call_started()
            else:
                answers[i] = functools.partial(self._continued, (outcome, request))
        if poller is not None and places:
            poller.arm()  # polls on only if this answers the one call in flight
        return answers

    @maps_errors
    async def _continued(
        self, done: tuple[ModelVersion | None, codec.InferRequest], context
    ) -> bytes:
        """The rest of ModelInfer for a call ``infer_together`` decoded but did not
        answer (routed to a version's queue, or to be served by ``DataPlane.infer``)."""
        return await self._infer(done[1], done[0], context)

    def _encoded(
        self,
        mv: Answered,
        decoded: codec.InferRequest,
        outputs: Outputs,
        encode: Callable[..., bytes] = replies.encode_response,
    ) -> bytes:
        """The serialized answer (``encode``: a ModelInferResponse, or a stream's)."""
        return self._sized(
            encode(
                mv.name,
                str(mv.version),
                decoded.id,
                outputs.items(),
                decoded.output_targets,
                decoded.response_parameters,
            )
        )

    def _sized(self, reply: bytes) -> bytes:
        """The answer, unless it is over the message limit: gRPC's own refusal of it
        names no flag (and in a stream it would end the whole stream)."""
        if self.max_message_bytes is not None and len(reply) > self.max_message_bytes:
            raise limits.answer_too_large(len(reply), self.max_message_bytes)
        return reply


SERVICE = "inference.GRPCInferenceService"


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the service as its generated code does, except for ModelInfer and
    ModelStreamInfer: they take their requests through ``codec.receive_infer`` (raw
    tensors stay views of the bytes gRPC received) and answer with bytes the codec
    serialized (raw output tensors are not copied through a protobuf message).

    With the servicer's ``max_message_bytes``, requests over it are refused with a hint
    naming the flag that raises it (``limits``); the server's gRPC options must then let
    them through (``limits.receive_ceiling``)."""
    captured = _CapturedHandlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, captured)
    handlers = dict(captured.handlers)
    receive = servicer.receive
    max_message_bytes = servicer.max_message_bytes
    if max_message_bytes is not None:
        handlers = {
            name: limits.bounded_unary(h, max_message_bytes) if h.unary_unary else h
            for name, h in handlers.items()
        }
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=receive,
        response_serializer=None,  # serialized by the codec
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        request_deserializer=receive,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    if isinstance(server, NativeServer):
        poller = servicer.dataplane.poller
        server.add_together_handler(
            f"/{SERVICE}/ModelInfer",
            servicer.infer_together,
            poller.call_ended if poller is not None else None,
        )


class _CapturedHandlers:
    """Stands in for a server to collect the generated code's method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        assert service == SERVICE, service
        self.handlers = handlers
