"""Build protocol responses (metadata, statistics, repository index) from the registry."""

from __future__ import annotations

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.errors import InvalidInput
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.served import parse_version
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.repository import overrides
from warpserve.server.stats import Duration
from warpserve.server.validation import tensor_specs


def metadata(mv: ModelVersion, versions: list[int]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(
        name=mv.name, versions=[str(v) for v in versions], platform=mv.config.platform
    )
    batched = mv.config.max_batch_size > 0
    for tensors, target in (
        (mv.config.input, response.inputs),
        (mv.config.output, response.outputs),
    ):
        for spec in tensor_specs(tensors).values():
            target.add(name=spec.name, datatype=spec.dtype.wire, shape=spec.metadata_shape(batched))
    return response


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def version_statistics(mv: ModelVersion) -> pb.ModelStatistics:
    s = mv.stats
    stats = pb.ModelStatistics(
        name=mv.name,
        version=str(mv.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
    )
    for size, batch in sorted(s.batches.items()):
        stats.batch_stats.add(
            batch_size=size,
            compute_input=_duration(batch.compute_input),
            compute_infer=_duration(batch.compute_infer),
            compute_output=_duration(batch.compute_output),
        )
    return stats


def statistics(registry: ModelRegistry, name: str, version: str) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    wanted = parse_version(version) if version else None
    for model_name, served in sorted(registry.models.items()):
        if name and model_name != name:
            continue
        for number, mv in sorted(served.versions.items()):
            if wanted is None or number == wanted:
                response.model_stats.append(version_statistics(mv))
    return response


def index(registry: ModelRegistry, ready_only: bool) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for name in sorted(set(registry.repository.model_names()) | set(registry.models)):
        served = registry.models.get(name)
        if served is None or not served.versions:
            if not ready_only:
                state = "UNAVAILABLE" if served is None or not served.reason else "FAILED"
                reason = served.reason if served is not None else "not loaded"
                response.models.add(name=name, state=state, reason=reason)
            continue
        for number, mv in sorted(served.versions.items()):
            if ready_only and not mv.ready:
                continue
            response.models.add(
                name=name, version=str(number), state=mv.state.value, reason=mv.reason
            )
    return response


async def load_request(registry: ModelRegistry, request: pb.RepositoryModelLoadRequest) -> None:
    if request.repository_name:
        raise InvalidInput("only the default repository (empty repository_name) exists")
    params = dict(request.parameters.items())
    versions = None
    if "version" in params:
        versions = [parse_version(str(params.pop("version").int64_param or ""))]
    if params:
        overrides.apply(registry.repository, request.model_name, params)
    await registry.load(request.model_name, versions)
