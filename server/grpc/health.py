"""grpc.health.v1.Health, reporting SERVING until shutdown starts."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

SERVICES = ("", "inference.GRPCInferenceService")


class HealthReporter:
    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def serving(self) -> None:
        for name in SERVICES:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        for name in SERVICES:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
